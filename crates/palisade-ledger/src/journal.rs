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
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Strict,
            checkpoint_interval: Duration::from_secs(1),
        }
    }
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
    /// needed, and starts the writer thread.
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
        let wal_path = dir.join("wal");
        let (mut wal, recovered) = Wal::open(&wal_path).map_err(io(&wal_path))?;
        let mut replay = Vec::new();
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
        let replayed = replay.len() as u64;
        if !replay.is_empty() {
            ledger.append(&replay)?;
        }
        wal.reset().map_err(io(&wal_path))?;
        let recovery = Recovery {
            size: ledger.size(),
            replayed,
            truncated_bytes: recovered.truncated_bytes,
        };

        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("palisade-ledger".into())
            .spawn(move || {
                let _lock = lock;
                Writer {
                    ledger,
                    wal,
                    config,
                    pending: Vec::new(),
                }
                .run(&rx);
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

struct Writer {
    ledger: Ledger,
    wal: Wal,
    config: JournalConfig,
    /// Entries in the write-ahead file, not yet in a checkpoint.
    pending: Vec<Vec<u8>>,
}

impl Writer {
    fn run(mut self, rx: &mpsc::Receiver<Command>) {
        let mut last_checkpoint = Instant::now();
        loop {
            let wait = self
                .config
                .checkpoint_interval
                .saturating_sub(last_checkpoint.elapsed());
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
                        let _ = self.checkpoint();
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.checkpoint();
                    return;
                }
            }
            if last_checkpoint.elapsed() >= self.config.checkpoint_interval {
                // A failure leaves the entries in the write-ahead file; the
                // next interval tries again.
                let _ = self.checkpoint();
                last_checkpoint = Instant::now();
            }
        }
    }

    fn next_seq(&self) -> u64 {
        self.ledger.size() + self.pending.len() as u64
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
            }
        }
        if !entries.is_empty() {
            let first = self.next_seq();
            let frames: Vec<(u64, &[u8])> = entries
                .iter()
                .enumerate()
                .map(|(i, e)| (first + i as u64, e.as_slice()))
                .collect();
            let written = self
                .wal
                .write(&frames)
                .and_then(|()| match self.config.durability {
                    Durability::Strict => self.wal.sync(),
                    Durability::Relaxed => Ok(()),
                });
            match written {
                Ok(()) => {
                    self.pending.extend(entries);
                    for (i, reply) in replies.into_iter().enumerate() {
                        if let Some(reply) = reply {
                            let _ = reply.send(Ok(first + i as u64));
                        }
                    }
                }
                Err(e) => {
                    let err = JournalError::Write(e.to_string());
                    for reply in replies.into_iter().flatten() {
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
        }
        for reply in checkpoints {
            let result = self.checkpoint().and_then(|()| {
                self.ledger
                    .checkpoint()
                    .map_err(|e| JournalError::Write(e.to_string()))
            });
            let _ = reply.send(result);
        }
        stop
    }

    fn checkpoint(&mut self) -> Result<(), JournalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let fail = |e: &dyn std::fmt::Display| JournalError::Write(e.to_string());
        if self.config.durability == Durability::Relaxed {
            self.wal.sync().map_err(|e| fail(&e))?;
        }
        self.ledger.append(&self.pending).map_err(|e| fail(&e))?;
        self.pending.clear();
        self.wal.reset().map_err(|e| fail(&e))
    }
}
