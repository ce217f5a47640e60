//! The journal: the one writer of a ledger.
//!
//! An append numbers its entry and writes it to the write-ahead file on the
//! caller's own thread, under one short lock, so that a request pays no
//! hand-over to another thread for its record. Under
//! [`Durability::Strict`] it then waits for the journal's thread to sync
//! the file, once for every append waiting at that moment (group commit);
//! under [`Durability::Relaxed`] it is answered as soon as it is written.
//! Every `checkpoint_interval` the journal's thread closes the current
//! segment and the entries written to it go into the tiles and a new signed
//! checkpoint on a second thread, after which the segment is deleted. A
//! lock file keeps a second process from writing the same ledger. At start
//! the write-ahead segments are read back: a torn tail is cut off and
//! entries not yet in a checkpoint are put into one.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::key::LedgerKey;
use crate::log::{Ledger, LedgerError, MAX_ENTRY_BYTES};
use crate::wal::Wal;

/// When an append is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// After the entry is synced to disk.
    Strict,
    /// After the entry is written; synced at the next checkpoint, so a
    /// machine crash can lose up to one checkpoint interval of entries.
    Relaxed,
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub durability: Durability,
    pub checkpoint_interval: Duration,
    /// Where the size and root of the latest signed checkpoint are kept,
    /// outside the ledger directory. At start a ledger smaller than that, or
    /// of that size with another root, is refused: signing it would give one
    /// size two roots (a rolled-back or substituted ledger directory).
    pub head_file: Option<PathBuf>,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Strict,
            checkpoint_interval: Duration::from_secs(1),
            head_file: None,
        }
    }
}

/// Reads a head file: `<size> <hex root>`.
fn read_head(path: &Path) -> Option<(u64, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (size, root) = text.trim().split_once(' ')?;
    Some((size.parse().ok()?, root.to_owned()))
}

fn hex(hash: &tlog_tiles::Hash) -> String {
    hash.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_head(path: &Path, ledger: &Ledger) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("ledger.head");
    crate::layout::write_atomic(
        dir,
        name,
        format!("{} {}\n", ledger.size(), hex(&ledger.root())).as_bytes(),
    )
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    #[error("the audit ledger cannot record: {0}")]
    Write(String),
    #[error("entry of {0} bytes exceeds the {MAX_ENTRY_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("the audit ledger has stopped")]
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the ledger at {0} is in use by another process")]
    Locked(PathBuf),
    #[error(
        "the ledger has {found} entries but a checkpoint of {signed} was signed before: the ledger directory was rolled back or replaced; refusing to sign a second root for those sizes"
    )]
    RolledBack { found: u64, signed: u64 },
    #[error(
        "the ledger's checkpoint at size {size} has a different root from the one signed before: the ledger directory was replaced"
    )]
    Forked { size: u64 },
    #[error("the write-ahead file has a gap: expected entry {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
}

/// What start-up found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Entries in the ledger before this start, including those replayed.
    pub size: u64,
    /// Entries that were durable but not yet in a checkpoint.
    pub replayed: u64,
    /// Bytes of a torn write cut off the write-ahead file.
    pub truncated_bytes: u64,
}

enum Command {
    /// Strict durability: answer once everything written so far is synced.
    Sync(oneshot::Sender<Result<(), JournalError>>),
    Checkpoint(oneshot::Sender<Result<Vec<u8>, JournalError>>),
    Stop,
}

pub struct Journal {
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Command>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    verifier_key: String,
    origin: String,
    dir: PathBuf,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Opens the ledger in `dir` for writing, recovering from a crash if
    /// needed, and starts the writer and checkpointer threads.
    pub fn open(
        dir: &Path,
        key: LedgerKey,
        config: JournalConfig,
    ) -> Result<(Self, Recovery), OpenError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| OpenError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        lock.try_lock()
            .map_err(|_| OpenError::Locked(dir.to_owned()))?;

        let verifier_key = key.verifier_key().to_owned();
        let origin = key.name().to_owned();
        let mut ledger = Ledger::open(dir, key)?;
        if let Some(head) = &config.head_file
            && let Some((signed, root)) = read_head(head)
        {
            if ledger.size() < signed {
                return Err(OpenError::RolledBack {
                    found: ledger.size(),
                    signed,
                });
            }
            if ledger.size() == signed && hex(&ledger.root()) != root {
                return Err(OpenError::Forked { size: signed });
            }
        }

        // Entries that reached a write-ahead segment but no checkpoint.
        let segments = list_segments(dir).map_err(io(dir))?;
        let mut replay = Vec::new();
        let mut truncated_bytes = 0;
        for (_, path) in &segments {
            let (_, recovered) = Wal::open(path).map_err(io(path))?;
            truncated_bytes += recovered.truncated_bytes;
            for (seq, entry) in recovered.frames {
                if seq < ledger.size() {
                    continue;
                }
                let expected = ledger.size() + replay.len() as u64;
                if seq != expected {
                    return Err(OpenError::Gap {
                        expected,
                        found: seq,
                    });
                }
                replay.push(entry);
            }
        }
        let replayed = replay.len() as u64;
        if !replay.is_empty() {
            ledger.append(&replay)?;
        }
        for (_, path) in &segments {
            std::fs::remove_file(path).map_err(io(path))?;
        }
        if let Some(head) = &config.head_file {
            write_head(head, &ledger).map_err(io(head))?;
        }
        let recovery = Recovery {
            size: ledger.size(),
            replayed,
            truncated_bytes,
        };

        let first = ledger.size();
        let wal_path = segment_path(dir, first);
        let (wal, _) = Wal::open(&wal_path).map_err(io(&wal_path))?;
        let (to_checkpointer, batches) = mpsc::channel();
        let head_file = config.head_file.clone();
        let checkpointer = std::thread::Builder::new()
            .name("palisade-ledger-checkpoint".into())
            .spawn(move || Checkpointer::new(ledger, head_file).run(&batches))
            .map_err(io(dir))?;
        let shared = Arc::new(Shared {
            tail: Mutex::new(Tail {
                wal,
                wal_path,
                next_seq: first,
                batch: Vec::new(),
                fault: None,
                stopped: false,
                #[cfg(test)]
                fail_writes: false,
            }),
            durability: config.durability,
            node: origin.clone(),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            shared: Arc::clone(&shared),
            dir: dir.to_owned(),
            checkpoint_interval: config.checkpoint_interval,
            to_checkpointer,
            unsynced: None,
        };
        let thread = std::thread::Builder::new()
            .name("palisade-ledger".into())
            .spawn(move || {
                let _lock = lock;
                writer.run(&rx);
                let _ = checkpointer.join();
            })
            .map_err(io(dir))?;
        Ok((
            Self {
                shared,
                tx: Some(tx),
                thread: Mutex::new(Some(thread)),
                closed: AtomicBool::new(false),
                verifier_key,
                origin,
                dir: dir.to_owned(),
            },
            recovery,
        ))
    }

    /// Appends an entry and waits until it is recorded: written to the
    /// write-ahead file, and synced under strict durability. Returns its
    /// sequence number. The write happens on the caller's thread (a short
    /// write to the page cache under one lock); only the sync, under strict
    /// durability, is the writer thread's, shared by every append waiting
    /// for one (group commit).
    pub async fn append(&self, entry: Vec<u8>) -> Result<u64, JournalError> {
        let seq = self.write(entry)?;
        if self.shared.durability == Durability::Strict {
            let (reply, rx) = oneshot::channel();
            self.command(Command::Sync(reply))?;
            rx.await.map_err(|_| JournalError::Stopped)??;
        }
        Ok(seq)
    }

    /// Appends an entry without waiting for a sync: it is written to the
    /// write-ahead file before this returns, and synced with the next group
    /// or checkpoint.
    pub fn submit(&self, entry: Vec<u8>) -> Result<(), JournalError> {
        self.write(entry).map(|_| ())
    }

    fn write(&self, entry: Vec<u8>) -> Result<u64, JournalError> {
        if entry.len() > MAX_ENTRY_BYTES {
            return Err(JournalError::TooLarge(entry.len()));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(JournalError::Stopped);
        }
        let mut tail = self.shared.lock()?;
        if tail.stopped {
            return Err(JournalError::Stopped);
        }
        match tail.write(entry) {
            Ok(seq) => {
                // Under strict durability an outage ends with a sync that
                // succeeds (the writer records it then).
                if self.shared.durability == Durability::Relaxed {
                    tail.record_fault_cleared(&self.shared.node);
                }
                Ok(seq)
            }
            Err(e) => {
                tail.failed(&e, 1);
                Err(JournalError::Write(e.to_string()))
            }
        }
    }

    fn command(&self, command: Command) -> Result<(), JournalError> {
        self.tx
            .as_ref()
            .ok_or(JournalError::Stopped)?
            .send(command)
            .map_err(|_| JournalError::Stopped)
    }

    /// Puts everything appended so far into tiles and a signed checkpoint
    /// now; returns the checkpoint.
    pub async fn checkpoint(&self) -> Result<Vec<u8>, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.command(Command::Checkpoint(reply))?;
        rx.await.map_err(|_| JournalError::Stopped)?
    }

    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tests: make write-ahead writes fail, as a full or broken disk would.
    #[cfg(test)]
    pub(crate) fn fail_writes(&self, on: bool) {
        if let Ok(mut tail) = self.shared.lock() {
            tail.fail_writes = on;
        }
    }
}

impl Journal {
    /// Stops the writer after it has checkpointed everything written; later
    /// appends fail with [`JournalError::Stopped`]. Blocks until done.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Stop);
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Journal {
    /// Stops the writer after it has checkpointed everything written.
    fn drop(&mut self) {
        drop(self.tx.take());
        self.close();
    }
}

/// The most commands the writer takes at once.
const MAX_GROUP: usize = 4096;

/// Write-ahead segments are named after the sequence number of their first
/// entry, so that they sort in order.
pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("wal-{first_seq:020}"))
}

fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix("wal-"))
            .and_then(|n| n.parse().ok())
        {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Work for the checkpointer: entries that are durable in `segment`, to be
/// put into tiles and a checkpoint, after which the segment is deleted.
enum Batch {
    Entries {
        entries: Vec<Vec<u8>>,
        segment: Option<PathBuf>,
        reply: Option<oneshot::Sender<Result<Vec<u8>, JournalError>>>,
    },
    Stop,
}

/// What appends and the writer share: the write-ahead file's tail.
struct Shared {
    tail: Mutex<Tail>,
    durability: Durability,
    /// The ledger's origin, for the entries the journal makes itself.
    node: String,
}

impl Shared {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Tail>, JournalError> {
        self.tail.lock().map_err(|_| JournalError::Stopped)
    }
}

/// The current write-ahead segment and the entries in it. Appends number
/// and write their entries here under the lock; the writer swaps in a new
/// segment at each checkpoint.
struct Tail {
    wal: Wal,
    wal_path: PathBuf,
    next_seq: u64,
    /// Entries in the current segment.
    batch: Vec<Vec<u8>>,
    /// Set while appends fail; recorded when they succeed again.
    fault: Option<Fault>,
    /// The writer has stopped: nothing more is taken.
    stopped: bool,
    #[cfg(test)]
    fail_writes: bool,
}

/// An outage of the write-ahead file.
struct Fault {
    error: String,
    since: std::time::SystemTime,
    started: Instant,
    failed_appends: u64,
}

impl Tail {
    /// Numbers `entry`, writes it (not yet synced) and adds it to the
    /// current segment's batch. Returns its number.
    fn write(&mut self, entry: Vec<u8>) -> std::io::Result<u64> {
        #[cfg(test)]
        if self.fail_writes {
            return Err(std::io::Error::other("injected write failure"));
        }
        let seq = self.next_seq;
        self.wal.write(&[(seq, &entry)])?;
        self.next_seq += 1;
        self.batch.push(entry);
        Ok(seq)
    }

    /// Counts `appends` refused by `error` into the current outage.
    fn failed(&mut self, error: &std::io::Error, appends: u64) {
        let fault = self.fault.get_or_insert_with(|| Fault {
            error: error.to_string(),
            since: std::time::SystemTime::now(),
            started: Instant::now(),
            failed_appends: 0,
        });
        fault.failed_appends += appends;
    }

    /// After an outage, once appends succeed again: `ledger.fault` (when it
    /// began, the error, how many appends were refused) and
    /// `ledger.fault_cleared`.
    fn record_fault_cleared(&mut self, node: &str) {
        let Some(fault) = self.fault.take() else {
            return;
        };
        let since = crate::time::timestamp(fault.since);
        let made = [
            crate::canonical::entry(
                "ledger.fault",
                node,
                serde_json::json!({"since": since, "error": fault.error, "failed_appends": fault.failed_appends}),
            ),
            crate::canonical::entry(
                "ledger.fault_cleared",
                node,
                serde_json::json!({"since": since, "duration_ms": fault.started.elapsed().as_millis() as u64,
                                   "failed_appends": fault.failed_appends}),
            ),
        ];
        for entry in made.into_iter().filter_map(Result::ok) {
            if self.write(entry).is_err() {
                // Still failing: keep the fault for the next success.
                self.fault = Some(fault);
                return;
            }
        }
    }
}

/// The journal's thread: syncs the write-ahead file for appends that wait
/// on it (strict durability), and at every checkpoint interval closes the
/// current segment and hands its entries to the checkpointer. Never waits
/// on tile or checkpoint writes, which run on the checkpointer's thread.
/// Under relaxed durability it wakes only for checkpoints.
struct Writer {
    shared: Arc<Shared>,
    dir: PathBuf,
    checkpoint_interval: Duration,
    to_checkpointer: mpsc::Sender<Batch>,
    /// A closed segment whose sync failed: entries that may have been in
    /// it are not durable, so the next sync fails too.
    unsynced: Option<String>,
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Command>) {
        let mut last_rotation = Instant::now();
        loop {
            let wait = self
                .checkpoint_interval
                .saturating_sub(last_rotation.elapsed());
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(cmd) => group.push(cmd),
                            Err(_) => break,
                        }
                    }
                    if self.handle(group) {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_rotation.elapsed() >= self.checkpoint_interval {
                self.rotate(None);
                last_rotation = Instant::now();
            }
        }
        if let Ok(mut tail) = self.shared.lock() {
            tail.stopped = true;
        }
        self.rotate(None);
        let _ = self.to_checkpointer.send(Batch::Stop);
    }

    /// Handles a group; `true` when it asked the writer to stop.
    fn handle(&mut self, group: Vec<Command>) -> bool {
        let mut syncs = Vec::new();
        let mut checkpoints = Vec::new();
        let mut stop = false;
        for cmd in group {
            match cmd {
                Command::Sync(reply) => syncs.push(reply),
                Command::Checkpoint(reply) => checkpoints.push(reply),
                Command::Stop => stop = true,
            }
        }
        if !syncs.is_empty() {
            let result = self.sync(syncs.len() as u64);
            for reply in syncs {
                let _ = reply.send(result.clone());
            }
        }
        for reply in checkpoints {
            self.rotate(Some(reply));
        }
        stop
    }

    /// Makes everything written so far durable, for `waiting` appends.
    /// The file is synced outside the lock: appends go on meanwhile.
    fn sync(&mut self, waiting: u64) -> Result<(), JournalError> {
        let file = self.shared.lock()?.wal.sync_handle();
        let result = match self.unsynced.take() {
            Some(error) => Err(std::io::Error::other(error)),
            None => file.sync_data(),
        };
        let mut tail = self.shared.lock()?;
        match result {
            Ok(()) => {
                tail.record_fault_cleared(&self.shared.node);
                Ok(())
            }
            Err(e) => {
                tail.failed(&e, waiting);
                Err(JournalError::Write(e.to_string()))
            }
        }
    }

    /// Closes the current segment and hands its entries to the
    /// checkpointer. `reply` is answered with the resulting checkpoint.
    fn rotate(&mut self, reply: Option<oneshot::Sender<Result<Vec<u8>, JournalError>>>) {
        let fail = |reply: Option<oneshot::Sender<_>>, e: JournalError| {
            if let Some(reply) = reply {
                let _ = reply.send(Err(e));
            }
        };
        let mut tail = match self.shared.lock() {
            Ok(tail) => tail,
            Err(e) => return fail(reply, e),
        };
        if tail.batch.is_empty() {
            drop(tail);
            if let Some(reply) = reply {
                let _ = self.to_checkpointer.send(Batch::Entries {
                    entries: Vec::new(),
                    segment: None,
                    reply: Some(reply),
                });
            }
            return;
        }
        let next_path = segment_path(&self.dir, tail.next_seq);
        let next = match Wal::open(&next_path) {
            Ok((wal, _)) => wal,
            // Keep appending to this segment; the next rotation retries.
            Err(e) => return fail(reply, JournalError::Write(e.to_string())),
        };
        let old = std::mem::replace(&mut tail.wal, next);
        let old_path = std::mem::replace(&mut tail.wal_path, next_path);
        let entries = std::mem::take(&mut tail.batch);
        drop(tail);
        // The closed segment is durable before its entries go on: the
        // checkpointer deletes it only once they are in a checkpoint. If
        // the sync fails they still go on (the tiles are synced in their
        // turn), and appends waiting for a sync are told it failed.
        if let Err(e) = old.sync() {
            self.unsynced = Some(e.to_string());
        }
        let _ = self.to_checkpointer.send(Batch::Entries {
            entries,
            segment: Some(old_path),
            reply,
        });
    }
}

/// Owns the tiles and checkpoints: puts durable entries into them, then
/// deletes the write-ahead segments they came from. A failure keeps the
/// entries and segments and tries again with the next batch.
struct Checkpointer {
    ledger: Ledger,
    pending: Vec<Vec<u8>>,
    segments: Vec<PathBuf>,
    head_file: Option<PathBuf>,
}

impl Checkpointer {
    fn new(ledger: Ledger, head_file: Option<PathBuf>) -> Self {
        Self {
            ledger,
            pending: Vec::new(),
            segments: Vec::new(),
            head_file,
        }
    }

    fn run(mut self, rx: &mpsc::Receiver<Batch>) {
        while let Ok(Batch::Entries {
            entries,
            segment,
            reply,
        }) = rx.recv()
        {
            self.pending.extend(entries);
            self.segments.extend(segment);
            let result = self.checkpoint();
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        }
    }

    fn checkpoint(&mut self) -> Result<Vec<u8>, JournalError> {
        let fail = |e: &dyn std::fmt::Display| JournalError::Write(e.to_string());
        if !self.pending.is_empty() {
            self.ledger.append(&self.pending).map_err(|e| fail(&e))?;
            self.pending.clear();
            if let Some(head) = &self.head_file {
                write_head(head, &self.ledger).map_err(|e| fail(&e))?;
            }
        }
        for segment in self.segments.drain(..) {
            let _ = std::fs::remove_file(segment);
        }
        if self.ledger.size() == 0 {
            return Ok(Vec::new());
        }
        self.ledger.checkpoint().map_err(|e| fail(&e))
    }
}
