//! The journal: the one writer of a ledger, on its own thread.
//!
//! Appends arrive over a channel. The writer takes every append that is
//! waiting, assigns sequence numbers, writes them to the write-ahead file
//! and syncs once for the whole group (group commit); under
//! [`Durability::Strict`] an append is answered only after that sync. Every
//! `checkpoint_interval` the entries written since the last checkpoint go
//! into the tiles and a new signed checkpoint, and the write-ahead file is
//! emptied. A lock file keeps a second process from writing the same ledger.
//! At start the write-ahead file is read back: a torn tail is cut off and
//! entries not yet in a checkpoint are put into one.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
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
    Append {
        entry: Vec<u8>,
        reply: Option<oneshot::Sender<Result<u64, JournalError>>>,
    },
    Checkpoint(oneshot::Sender<Result<Vec<u8>, JournalError>>),
    Stop,
    /// Tests: make write-ahead writes fail (or stop failing).
    #[cfg(test)]
    FailWrites(bool),
}

pub struct Journal {
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
        let (tx, rx) = mpsc::channel();
        let writer_dir = dir.to_owned();
        let writer_origin = origin.clone();
        let thread = std::thread::Builder::new()
            .name("palisade-ledger".into())
            .spawn(move || {
                let _lock = lock;
                Writer {
                    dir: writer_dir,
                    wal,
                    wal_path,
                    next_seq: first,
                    batch: Vec::new(),
                    config,
                    to_checkpointer,
                    node: writer_origin,
                    fault: None,
                    #[cfg(test)]
                    fail_writes: false,
                }
                .run(&rx);
                let _ = checkpointer.join();
            })
            .map_err(io(dir))?;
        Ok((
            Self {
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

    /// Appends an entry and waits until it is recorded (durably, under
    /// strict durability). Returns its sequence number.
    pub async fn append(&self, entry: Vec<u8>) -> Result<u64, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.send(entry, Some(reply))?;
        rx.await.map_err(|_| JournalError::Stopped)?
    }

    /// Appends an entry without waiting for it. The entry is queued before
    /// this returns and is written with the next group.
    pub fn submit(&self, entry: Vec<u8>) -> Result<(), JournalError> {
        self.send(entry, None)
    }

    fn send(
        &self,
        entry: Vec<u8>,
        reply: Option<oneshot::Sender<Result<u64, JournalError>>>,
    ) -> Result<(), JournalError> {
        if entry.len() > MAX_ENTRY_BYTES {
            return Err(JournalError::TooLarge(entry.len()));
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(JournalError::Stopped);
        }
        self.tx
            .as_ref()
            .ok_or(JournalError::Stopped)?
            .send(Command::Append { entry, reply })
            .map_err(|_| JournalError::Stopped)
    }

    /// Puts everything appended so far into tiles and a signed checkpoint
    /// now; returns the checkpoint.
    pub async fn checkpoint(&self) -> Result<Vec<u8>, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or(JournalError::Stopped)?
            .send(Command::Checkpoint(reply))
            .map_err(|_| JournalError::Stopped)?;
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
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::FailWrites(on));
        }
    }
}

impl Journal {
    /// Stops the writer after it has checkpointed everything queued; later
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
    /// Stops the writer after it has checkpointed everything queued.
    fn drop(&mut self) {
        drop(self.tx.take());
        self.close();
    }
}

/// The most appends written and synced as one group.
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

/// Owns the write-ahead file: numbers appends, writes and syncs them in
/// groups. Never waits on tile or checkpoint writes, which run on the
/// checkpointer's thread.
struct Writer {
    dir: PathBuf,
    wal: Wal,
    wal_path: PathBuf,
    next_seq: u64,
    /// Entries in the current segment.
    batch: Vec<Vec<u8>>,
    config: JournalConfig,
    to_checkpointer: mpsc::Sender<Batch>,
    /// The ledger's origin, for the entries the writer makes itself.
    node: String,
    /// Set while appends fail; recorded when they succeed again.
    fault: Option<Fault>,
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

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Command>) {
        let mut last_rotation = Instant::now();
        loop {
            let wait = self
                .config
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
            if last_rotation.elapsed() >= self.config.checkpoint_interval {
                self.rotate(None);
                last_rotation = Instant::now();
            }
        }
        self.rotate(None);
        let _ = self.to_checkpointer.send(Batch::Stop);
    }

    /// Handles a group; `true` when it asked the writer to stop.
    fn handle(&mut self, group: Vec<Command>) -> bool {
        let mut entries = Vec::new();
        let mut replies = Vec::new();
        let mut checkpoints = Vec::new();
        let mut stop = false;
        for cmd in group {
            match cmd {
                Command::Append { entry, reply } => {
                    entries.push(entry);
                    replies.push(reply);
                }
                Command::Checkpoint(reply) => checkpoints.push(reply),
                Command::Stop => stop = true,
                #[cfg(test)]
                Command::FailWrites(on) => self.fail_writes = on,
            }
        }
        if !entries.is_empty() {
            match self.append_frames(entries) {
                Ok(first) => {
                    self.record_fault_cleared();
                    for (i, reply) in replies.into_iter().enumerate() {
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(first + i as u64));
                        }
                    }
                }
                Err(e) => {
                    let err = JournalError::Write(e.to_string());
                    let fault = self.fault.get_or_insert_with(|| Fault {
                        error: e.to_string(),
                        since: std::time::SystemTime::now(),
                        started: Instant::now(),
                        failed_appends: 0,
                    });
                    fault.failed_appends += replies.len() as u64;
                    for reply in replies.into_iter().flatten() {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        }
        for reply in checkpoints {
            self.rotate(Some(reply));
        }
        stop
    }

    /// Numbers `entries`, writes them (synced under strict durability) and
    /// adds them to the current segment's batch. Returns the first number.
    fn append_frames(&mut self, entries: Vec<Vec<u8>>) -> std::io::Result<u64> {
        let first = self.next_seq;
        let frames: Vec<(u64, &[u8])> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (first + i as u64, e.as_slice()))
            .collect();
        self.write_frames(&frames)?;
        self.next_seq += entries.len() as u64;
        self.batch.extend(entries);
        Ok(first)
    }

    fn write_frames(&mut self, frames: &[(u64, &[u8])]) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fail_writes {
            return Err(std::io::Error::other("injected write failure"));
        }
        self.wal.write(frames)?;
        match self.config.durability {
            Durability::Strict => self.wal.sync(),
            Durability::Relaxed => Ok(()),
        }
    }

    /// After an outage, once appends succeed again: `ledger.fault` (when it
    /// began, the error, how many appends were refused) and
    /// `ledger.fault_cleared`.
    fn record_fault_cleared(&mut self) {
        let Some(fault) = self.fault.take() else {
            return;
        };
        let since = crate::time::timestamp(fault.since);
        let made = [
            crate::canonical::entry(
                "ledger.fault",
                &self.node,
                serde_json::json!({"since": since, "error": fault.error, "failed_appends": fault.failed_appends}),
            ),
            crate::canonical::entry(
                "ledger.fault_cleared",
                &self.node,
                serde_json::json!({"since": since, "duration_ms": fault.started.elapsed().as_millis() as u64,
                                   "failed_appends": fault.failed_appends}),
            ),
        ];
        let entries: Vec<Vec<u8>> = made.into_iter().filter_map(Result::ok).collect();
        if self.append_frames(entries).is_err() {
            // Still failing: keep the fault for the next success.
            self.fault = Some(fault);
        }
    }

    /// Closes the current segment and hands its entries to the
    /// checkpointer. `reply` is answered with the resulting checkpoint.
    fn rotate(&mut self, reply: Option<oneshot::Sender<Result<Vec<u8>, JournalError>>>) {
        if self.batch.is_empty() {
            if let Some(reply) = reply {
                let _ = self.to_checkpointer.send(Batch::Entries {
                    entries: Vec::new(),
                    segment: None,
                    reply: Some(reply),
                });
            }
            return;
        }
        let fail = |reply: Option<oneshot::Sender<_>>, e: std::io::Error| {
            if let Some(reply) = reply {
                let _ = reply.send(Err(JournalError::Write(e.to_string())));
            }
        };
        if self.config.durability == Durability::Relaxed
            && let Err(e) = self.wal.sync()
        {
            return fail(reply, e);
        }
        let next_path = segment_path(&self.dir, self.next_seq);
        let next = match Wal::open(&next_path) {
            Ok((wal, _)) => wal,
            // Keep appending to this segment; the next rotation retries.
            Err(e) => return fail(reply, e),
        };
        let old_path = std::mem::replace(&mut self.wal_path, next_path);
        self.wal = next;
        let _ = self.to_checkpointer.send(Batch::Entries {
            entries: std::mem::take(&mut self.batch),
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
