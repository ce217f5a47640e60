//! Verification of a ledger directory from first principles: every entry
//! is re-hashed, every hash tile recomputed and compared, the root compared
//! with the checkpoint, and the checkpoint's signature checked. The first
//! problem is reported with the index of the entry it concerns.

use std::path::Path;

use tlog_tiles::{Hash, HashReader, Tile};

use crate::layout::{self, HEIGHT, WIDTH};
use crate::log::{LedgerError, TreeHead, read_checkpoint};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("no checkpoint in the ledger directory")]
    NoCheckpoint,
    #[error(transparent)]
    Checkpoint(#[from] LedgerError),
    #[error("entry bundle {bundle} is missing or unreadable (entries from index {index})")]
    MissingBundle { bundle: u64, index: u64 },
    #[error("entry bundle {bundle} is malformed (entries from index {index})")]
    MalformedBundle { bundle: u64, index: u64 },
    #[error("hash tile {path} is missing (covers entries from index {index})")]
    MissingTile { path: String, index: u64 },
    #[error("entry {index} does not match the ledger's hash tiles ({path})")]
    Mismatch { index: u64, path: String },
    #[error("the recomputed root does not match the signed checkpoint")]
    RootMismatch,
    #[error(
        "the earlier checkpoint (size {size}) is not a prefix of the current log (size {current}): the log was rewritten"
    )]
    Inconsistent { size: u64, current: u64 },
    #[error("the earlier checkpoint is malformed or not signed by this key")]
    EarlierCheckpoint,
    #[error("tile arithmetic failed: {0}")]
    Math(#[from] tlog_tiles::Error),
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub head: TreeHead,
    pub tiles_checked: usize,
}

/// All stored hashes of the tree being rebuilt, by stored-hash index.
struct Hashes(Vec<Hash>);

impl HashReader for Hashes {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                self.0
                    .get(i as usize)
                    .copied()
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// Verifies the ledger in `dir` against the auditor's `verifier_key`.
pub fn verify(dir: &Path, verifier_key: &str) -> Result<Verified, VerifyError> {
    verify_since(dir, verifier_key, None)
}

/// Like [`verify`], and also checks that `earlier` — a checkpoint saved
/// from this log before — describes a prefix of the current tree: same
/// origin, no larger, and the root of the first `size` entries.
pub fn verify_since(
    dir: &Path,
    verifier_key: &str,
    earlier: Option<&[u8]>,
) -> Result<Verified, VerifyError> {
    let (head, _) = read_checkpoint(dir, verifier_key)?.ok_or(VerifyError::NoCheckpoint)?;
    let earlier = earlier
        .map(|bytes| parse_signed(bytes, verifier_key))
        .transpose()?;
    let size = head.size;

    let mut hashes = Hashes(Vec::with_capacity(
        tlog_tiles::stored_hash_count(size) as usize
    ));
    let bundles = size.div_ceil(WIDTH);
    for b in 0..bundles {
        let start = b * WIDTH;
        let width = (size - start).min(WIDTH);
        let data = layout::read_tile(dir, None, b, width, None).map_err(|_| {
            VerifyError::MissingBundle {
                bundle: b,
                index: start,
            }
        })?;
        let entries = layout::decode_bundle(&data).ok_or(VerifyError::MalformedBundle {
            bundle: b,
            index: start,
        })?;
        // A full bundle read for a partial width holds more; use the prefix.
        if (entries.len() as u64) < width {
            return Err(VerifyError::MalformedBundle {
                bundle: b,
                index: start,
            });
        }
        for (i, entry) in entries.iter().take(width as usize).enumerate() {
            let n = start + i as u64;
            let new = tlog_tiles::stored_hashes(n, entry, &hashes)?;
            hashes.0.extend(new);
        }
    }

    let tiles = Tile::new_tiles(HEIGHT, 0, size);
    for tile in &tiles {
        let width = u64::from(tile.width());
        let path = layout::tile_path(Some(tile.level()), tile.level_index(), width);
        let first_entry = tile.level_index() << (HEIGHT * (tile.level() + 1));
        let on_disk =
            layout::read_tile(dir, Some(tile.level()), tile.level_index(), width, Some(32))
                .map_err(|_| VerifyError::MissingTile {
                    path: path.clone(),
                    index: first_entry,
                })?;
        let expected = tile.read_data(&hashes)?;
        if on_disk != expected {
            let position = on_disk
                .chunks(32)
                .zip(expected.chunks(32))
                .position(|(a, b)| a != b)
                .unwrap_or(on_disk.len().min(expected.len()) / 32)
                as u64;
            // The hash at `position` covers 256^level entries.
            let index = first_entry + (position << (HEIGHT * tile.level()));
            return Err(VerifyError::Mismatch { index, path });
        }
    }

    let root = tlog_tiles::tree_hash(size, &hashes)?;
    if root != head.root {
        return Err(VerifyError::RootMismatch);
    }
    if let Some(old) = earlier {
        if old.origin != head.origin || old.size > size {
            return Err(VerifyError::Inconsistent {
                size: old.size,
                current: size,
            });
        }
        if tlog_tiles::tree_hash(old.size, &hashes)? != old.root {
            return Err(VerifyError::Inconsistent {
                size: old.size,
                current: size,
            });
        }
    }
    Ok(Verified {
        head,
        tiles_checked: tiles.len(),
    })
}

/// A signed checkpoint's tree head, checked against `verifier_key`.
fn parse_signed(bytes: &[u8], verifier_key: &str) -> Result<TreeHead, VerifyError> {
    use signed_note::{Note, StandardVerifier, VerifierList};
    let verifier =
        StandardVerifier::new(verifier_key).map_err(|_| VerifyError::EarlierCheckpoint)?;
    let note = Note::from_bytes(bytes).map_err(|_| VerifyError::EarlierCheckpoint)?;
    note.verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|_| VerifyError::EarlierCheckpoint)?;
    let cp = tlog_tiles::Checkpoint::from_bytes(note.text())
        .map_err(|_| VerifyError::EarlierCheckpoint)?;
    Ok(TreeHead {
        origin: cp.origin().to_owned(),
        size: cp.size(),
        root: *cp.hash(),
    })
}
