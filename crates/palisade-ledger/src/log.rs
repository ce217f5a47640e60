//! The ledger writer: appends entries, writes entry bundles and hash tiles,
//! and signs a new checkpoint, in that order, so that everything a
//! checkpoint commits to is on disk before the checkpoint is.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use signed_note::{Note, Signer, StandardVerifier, VerifierList};
use tlog_tiles::{Checkpoint, EMPTY_HASH, Hash, HashReader, Tile};

use crate::key::LedgerKey;
use crate::layout::{self, HEIGHT, WIDTH};

/// The largest entry a bundle can frame.
pub const MAX_ENTRY_BYTES: usize = u16::MAX as usize;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger I/O at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("entry of {0} bytes exceeds the {MAX_ENTRY_BYTES}-byte bundle limit")]
    EntryTooLarge(usize),
    #[error("the ledger checkpoint is malformed or not signed by this ledger's key")]
    BadCheckpoint,
    #[error("the ledger checkpoint is for origin `{found}`, not `{expected}`")]
    WrongOrigin { found: String, expected: String },
    #[error("the ledger's tiles are inconsistent: {0}")]
    Tiles(#[from] tlog_tiles::Error),
    #[error("cannot sign the checkpoint")]
    Sign,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A checkpoint as read back: the tree it commits to.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeHead {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// Reads and verifies `<dir>/checkpoint` against `verifier_key`.
/// `Ok(None)` when the ledger has no checkpoint yet.
pub fn read_checkpoint(
    dir: &Path,
    verifier_key: &str,
) -> Result<Option<(TreeHead, Vec<u8>)>, LedgerError> {
    let path = dir.join("checkpoint");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    };
    let verifier = StandardVerifier::new(verifier_key).map_err(|_| LedgerError::BadCheckpoint)?;
    let note = Note::from_bytes(&bytes).map_err(|_| LedgerError::BadCheckpoint)?;
    let verifiers = VerifierList::new(vec![Box::new(verifier)]);
    note.verify(&verifiers)
        .map_err(|_| LedgerError::BadCheckpoint)?;
    let checkpoint = Checkpoint::from_bytes(note.text()).map_err(|_| LedgerError::BadCheckpoint)?;
    let head = TreeHead {
        origin: checkpoint.origin().to_owned(),
        size: checkpoint.size(),
        root: *checkpoint.hash(),
    };
    Ok(Some((head, bytes)))
}

pub struct Ledger {
    dir: PathBuf,
    key: LedgerKey,
    size: u64,
    root: Hash,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("dir", &self.dir)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Opens the ledger in `dir`, whose origin is the key's name. The
    /// current checkpoint, if any, must verify with `key`.
    pub fn open(dir: &Path, key: LedgerKey) -> Result<Self, LedgerError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (size, root) = match read_checkpoint(dir, key.verifier_key())? {
            None => (0, EMPTY_HASH),
            Some((head, _)) => {
                if head.origin != key.name() {
                    return Err(LedgerError::WrongOrigin {
                        found: head.origin,
                        expected: key.name().to_owned(),
                    });
                }
                (head.size, head.root)
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            key,
            size,
            root,
        })
    }

    /// Entries in the ledger (the size of the last checkpoint).
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn root(&self) -> Hash {
        self.root
    }

    pub fn origin(&self) -> &str {
        self.key.name()
    }

    pub fn verifier_key(&self) -> &str {
        self.key.verifier_key()
    }

    /// Appends `entries`, writes their bundles and tiles and a new signed
    /// checkpoint. Returns the sequence number of the first entry.
    pub fn append(&mut self, entries: &[Vec<u8>]) -> Result<u64, LedgerError> {
        if let Some(e) = entries.iter().find(|e| e.len() > MAX_ENTRY_BYTES) {
            return Err(LedgerError::EntryTooLarge(e.len()));
        }
        let old = self.size;
        let new = old + entries.len() as u64;
        if entries.is_empty() {
            return Ok(old);
        }

        // New stored hashes, computed against what is on disk.
        let mut pending: HashMap<u64, Hash> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let n = old + i as u64;
            let reader = DiskHashReader {
                dir: &self.dir,
                pending: &pending,
            };
            let hashes = tlog_tiles::stored_hashes(n, entry, &reader)?;
            let first = tlog_tiles::stored_hash_index(0, n);
            for (j, h) in hashes.into_iter().enumerate() {
                pending.insert(first + j as u64, h);
            }
        }
        let reader = DiskHashReader {
            dir: &self.dir,
            pending: &pending,
        };

        // Entry bundles.
        let mut superseded = Vec::new();
        let first_bundle = old / WIDTH;
        let last_bundle = (new - 1) / WIDTH;
        for b in first_bundle..=last_bundle {
            let start = b * WIDTH;
            let end = new.min(start + WIDTH);
            let mut data = Vec::new();
            if start < old {
                let have = old - start;
                data = layout::read_tile(&self.dir, None, b, have, None).map_err(io(&self.dir))?;
                superseded.push(layout::tile_path(None, b, have));
            }
            let from = start.max(old);
            let slice = &entries[(from - old) as usize..(end - old) as usize];
            data.extend_from_slice(&layout::encode_bundle(slice.iter().map(Vec::as_slice)));
            layout::write_atomic(&self.dir, &layout::tile_path(None, b, end - start), &data)
                .map_err(io(&self.dir))?;
        }

        // Hash tiles.
        for tile in Tile::new_tiles(HEIGHT, old, new) {
            let data = tile.read_data(&reader)?;
            let width = u64::from(tile.width());
            let path = layout::tile_path(Some(tile.level()), tile.level_index(), width);
            layout::write_atomic(&self.dir, &path, &data).map_err(io(&self.dir))?;
            // The same tile's partial version at the old size, if any.
            let old_n = old >> (u64::from(tile.level()) * u64::from(HEIGHT));
            if old_n >> HEIGHT == tile.level_index() {
                let old_width = old_n - (tile.level_index() << HEIGHT);
                if old_width > 0 && old_width < width {
                    superseded.push(layout::tile_path(
                        Some(tile.level()),
                        tile.level_index(),
                        old_width,
                    ));
                }
            }
        }

        // The checkpoint, last.
        let root = tlog_tiles::tree_hash(new, &reader)?;
        let checkpoint = Checkpoint::new(self.key.name(), new, root, "")
            .map_err(|_| LedgerError::BadCheckpoint)?;
        let signer = self.key.signer().ok_or(LedgerError::Sign)?;
        let mut note = Note::new(&checkpoint.to_bytes(), &[]).map_err(|_| LedgerError::Sign)?;
        note.add_sigs(&[&signer as &dyn Signer])
            .map_err(|_| LedgerError::Sign)?;
        layout::write_atomic(&self.dir, "checkpoint", &note.to_bytes()).map_err(io(&self.dir))?;
        self.size = new;
        self.root = root;

        // Partial tiles the new checkpoint no longer refers to.
        for path in superseded {
            let _ = std::fs::remove_file(self.dir.join(path));
        }
        Ok(old)
    }

    /// The current signed checkpoint's bytes.
    pub fn checkpoint(&self) -> Result<Vec<u8>, LedgerError> {
        let path = self.dir.join("checkpoint");
        std::fs::read(&path).map_err(io(&path))
    }
}

/// Stored hashes from this append (`pending`) or from the tiles on disk.
struct DiskHashReader<'a> {
    dir: &'a Path,
    pending: &'a HashMap<u64, Hash>,
}

impl HashReader for DiskHashReader<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&index| {
                if let Some(h) = self.pending.get(&index) {
                    return Ok(*h);
                }
                let tile = Tile::from_index(HEIGHT, index);
                let data = read_covering(
                    self.dir,
                    tile.level(),
                    tile.level_index(),
                    u64::from(tile.width()),
                )
                .ok_or(tlog_tiles::Error::IndexesNotInTree)?;
                let tile = Tile::new(
                    HEIGHT,
                    tile.level(),
                    tile.level_index(),
                    (data.len() / 32) as u32,
                    false,
                );
                tile.hash_at_index(&data, index)
            })
            .collect()
    }
}

/// A hash tile at least `min_width` wide: the full tile, or the widest
/// partial one.
fn read_covering(dir: &Path, level: u8, n: u64, min_width: u64) -> Option<Vec<u8>> {
    if let Ok(data) = std::fs::read(dir.join(layout::tile_path(Some(level), n, WIDTH))) {
        return Some(data);
    }
    let partial_dir = dir.join(format!("{}.p", layout::tile_path(Some(level), n, WIDTH)));
    let widest = std::fs::read_dir(partial_dir)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|w| *w >= min_width)
        .max()?;
    std::fs::read(dir.join(layout::tile_path(Some(level), n, widest))).ok()
}
