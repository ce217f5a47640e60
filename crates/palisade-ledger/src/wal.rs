//! The write-ahead file: entries are durable here before a checkpoint
//! covers them.
//!
//! A frame is `seq: u64 LE | len: u32 LE | check: u32 LE | entry`, where
//! `check` is the first four bytes of SHA-256 over the sequence number, the
//! length and the entry. Reading stops at the first frame that is short or
//! whose check fails: that is a torn tail from a crash mid-write, and it is
//! cut off.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

const HEADER: usize = 16;

pub struct Wal {
    /// Shared with [`Wal::sync_handle`], so that a sync need not hold
    /// whatever guards the writes.
    file: Arc<File>,
    len: u64,
}

/// What reading the file found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// `(seq, entry)` for every intact frame, in file order.
    pub frames: Vec<(u64, Vec<u8>)>,
    /// Bytes of torn tail that were cut off.
    pub truncated_bytes: u64,
}

fn check(seq: u64, entry: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(seq.to_le_bytes());
    h.update((entry.len() as u32).to_le_bytes());
    h.update(entry);
    let d = h.finalize();
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

impl Wal {
    /// Opens (creating) the file, reads every intact frame and cuts off a
    /// torn tail.
    pub fn open(path: &Path) -> std::io::Result<(Self, Recovered)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data)?;
        let mut recovered = Recovered::default();
        let mut at = 0usize;
        while data.len() - at >= HEADER {
            let seq = u64::from_le_bytes(data[at..at + 8].try_into().unwrap_or_default());
            let len =
                u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap_or_default()) as usize;
            let sum = u32::from_le_bytes(data[at + 12..at + 16].try_into().unwrap_or_default());
            let Some(entry) = data.get(at + HEADER..at + HEADER + len) else {
                break;
            };
            if check(seq, entry) != sum {
                break;
            }
            recovered.frames.push((seq, entry.to_vec()));
            at += HEADER + len;
        }
        recovered.truncated_bytes = (data.len() - at) as u64;
        if recovered.truncated_bytes > 0 {
            file.set_len(at as u64)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::Start(at as u64))?;
        Ok((
            Self {
                file: Arc::new(file),
                len: at as u64,
            },
            recovered,
        ))
    }

    /// Appends frames (not yet durable: call [`sync`](Self::sync)).
    pub fn write(&mut self, frames: &[(u64, &[u8])]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(frames.iter().map(|(_, e)| HEADER + e.len()).sum());
        for (seq, entry) in frames {
            buf.extend_from_slice(&seq.to_le_bytes());
            buf.extend_from_slice(&(entry.len() as u32).to_le_bytes());
            buf.extend_from_slice(&check(*seq, entry).to_le_bytes());
            buf.extend_from_slice(entry);
        }
        let mut file = &*self.file;
        if let Err(e) = file.write_all(&buf) {
            // Leave no partial frame behind for the next write to follow.
            let _ = file.set_len(self.len);
            let _ = file.seek(SeekFrom::Start(self.len));
            return Err(e);
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Makes everything written durable.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// The file, to make what was written before the call durable
    /// (`sync_data`) while writes go on.
    pub fn sync_handle(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// Empties the file once a checkpoint covers all of it.
    pub fn reset(&mut self) -> std::io::Result<()> {
        let mut file = &*self.file;
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        file.sync_all()?;
        self.len = 0;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_reopen_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, rec) = Wal::open(&path).unwrap();
        assert_eq!(rec, Recovered::default());
        wal.write(&[(0, b"first"), (1, b"second")]).unwrap();
        wal.sync().unwrap();
        let full = wal.len();
        drop(wal);

        // Every possible torn tail of a third frame is cut back to two frames.
        let mut third = Vec::new();
        third.extend_from_slice(&2u64.to_le_bytes());
        third.extend_from_slice(&5u32.to_le_bytes());
        third.extend_from_slice(&check(2, b"third").to_le_bytes());
        third.extend_from_slice(b"third");
        let intact = std::fs::read(&path).unwrap();
        for cut in 1..third.len() {
            let mut data = intact.clone();
            data.extend_from_slice(&third[..cut]);
            std::fs::write(&path, &data).unwrap();
            let (wal, rec) = Wal::open(&path).unwrap();
            assert_eq!(rec.frames.len(), 2, "cut {cut}");
            assert_eq!(rec.truncated_bytes, cut as u64);
            assert_eq!(wal.len(), full);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), full);
        }

        // A corrupted byte inside a frame ends the intact prefix there.
        let mut data = intact.clone();
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(&path, &data).unwrap();
        let (_, rec) = Wal::open(&path).unwrap();
        assert_eq!(rec.frames, vec![(0, b"first".to_vec())]);
    }

    #[test]
    fn reset_empties_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path).unwrap();
        wal.write(&[(7, b"x")]).unwrap();
        wal.reset().unwrap();
        wal.write(&[(8, b"y")]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        let (_, rec) = Wal::open(&path).unwrap();
        assert_eq!(rec.frames, vec![(8, b"y".to_vec())]);
    }
}
