//! Inclusion proofs as C2SP tlog-proof files: self-contained, offline
//! evidence that an entry is in the log at an index, under a checkpoint.
//!
//! ```text
//! c2sp.org/tlog-proof@v1
//! extra <base64 of the entry itself>
//! index <N>
//! <base64 hash>            the RFC 6962 audit path, one hash per line
//! ...
//!
//! <the signed checkpoint>
//! ```

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::{Checkpoint, Hash, Tile, TileHashReader, TileReader};

use crate::layout::{self, HEIGHT, WIDTH};
use crate::log::{LedgerError, read_checkpoint};

const HEADER: &str = "c2sp.org/tlog-proof@v1";

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("no checkpoint in the ledger directory")]
    NoCheckpoint,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("entry {index} is not in the log (size {size})")]
    OutOfRange { index: u64, size: u64 },
    #[error("cannot read the ledger: {0}")]
    Read(String),
    #[error("malformed proof: {0}")]
    Malformed(&'static str),
    #[error("the proof's checkpoint is not signed by the given key")]
    Signature,
    #[error("the entry is not at that index under the checkpoint")]
    Invalid,
}

/// Reads hash tiles from a ledger directory for `tlog_tiles`.
pub(crate) struct DirTiles<'a>(pub(crate) &'a Path);

impl TileReader for DirTiles<'_> {
    fn height(&self) -> u8 {
        HEIGHT
    }

    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
        tiles
            .iter()
            .map(|t| {
                layout::read_tile(
                    self.0,
                    Some(t.level()),
                    t.level_index(),
                    u64::from(t.width()),
                    Some(32),
                )
                .map_err(|_| tlog_tiles::Error::InvalidTile)
            })
            .collect()
    }

    fn save_tiles(&self, _: &[Tile], _: &[Vec<u8>]) {}
}

/// Reads entry `index` from the ledger in `dir` (of `size` entries).
pub fn read_entry(dir: &Path, size: u64, index: u64) -> Result<Vec<u8>, ProofError> {
    if index >= size {
        return Err(ProofError::OutOfRange { index, size });
    }
    let bundle = index / WIDTH;
    let width = (size - bundle * WIDTH).min(WIDTH);
    let data = layout::read_tile(dir, None, bundle, width, None)
        .map_err(|e| ProofError::Read(e.to_string()))?;
    let entries =
        layout::decode_bundle(&data).ok_or(ProofError::Read("malformed entry bundle".into()))?;
    entries
        .get((index % WIDTH) as usize)
        .map(|e| e.to_vec())
        .ok_or(ProofError::Read("entry bundle too short".into()))
}

/// Entries `from..to` (clamped to `size`) with their sequence numbers.
pub fn read_entries(
    dir: &Path,
    size: u64,
    from: u64,
    to: u64,
) -> Result<Vec<(u64, Vec<u8>)>, ProofError> {
    let to = to.min(size);
    let mut out = Vec::new();
    let mut bundle_start = from - from % WIDTH;
    while bundle_start < to {
        let bundle = bundle_start / WIDTH;
        let width = (size - bundle_start).min(WIDTH);
        let data = layout::read_tile(dir, None, bundle, width, None)
            .map_err(|e| ProofError::Read(e.to_string()))?;
        let entries = layout::decode_bundle(&data)
            .ok_or(ProofError::Read("malformed entry bundle".into()))?;
        for (i, e) in entries.into_iter().take(width as usize).enumerate() {
            let seq = bundle_start + i as u64;
            if seq >= from && seq < to {
                out.push((seq, e.to_vec()));
            }
        }
        bundle_start += WIDTH;
    }
    Ok(out)
}

/// A tlog-proof for entry `index` under the ledger's current checkpoint.
/// The tiles it uses are authenticated against the signed root first.
pub fn prove(dir: &Path, verifier_key: &str, index: u64) -> Result<String, ProofError> {
    let (head, checkpoint) = read_checkpoint(dir, verifier_key)?.ok_or(ProofError::NoCheckpoint)?;
    let entry = read_entry(dir, head.size, index)?;
    let tiles = DirTiles(dir);
    let reader = TileHashReader::new(head.size, head.root, &tiles);
    let path = tlog_tiles::prove_record(head.size, index, &reader)
        .map_err(|e| ProofError::Read(e.to_string()))?;
    tlog_tiles::check_record(
        &path,
        head.size,
        head.root,
        index,
        tlog_tiles::record_hash(&entry),
    )
    .map_err(|_| ProofError::Invalid)?;
    let mut out = format!("{HEADER}\nextra {}\nindex {index}\n", BASE64.encode(&entry));
    for h in &path {
        out.push_str(&BASE64.encode(h.0));
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&String::from_utf8_lossy(&checkpoint));
    Ok(out)
}

/// What a checked proof established.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvenEntry {
    pub origin: String,
    pub index: u64,
    pub size: u64,
    pub entry: Vec<u8>,
}

/// Checks a tlog-proof made by [`prove`] against `verifier_key`.
pub fn check(proof: &str, verifier_key: &str) -> Result<ProvenEntry, ProofError> {
    let (head, checkpoint) = proof
        .split_once("\n\n")
        .ok_or(ProofError::Malformed("no blank line"))?;
    let mut lines = head.lines();
    if lines.next() != Some(HEADER) {
        return Err(ProofError::Malformed("not a c2sp.org/tlog-proof@v1"));
    }
    let entry = lines
        .next()
        .and_then(|l| l.strip_prefix("extra "))
        .and_then(|b| BASE64.decode(b).ok())
        .ok_or(ProofError::Malformed("no extra line with the entry"))?;
    let index: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("index "))
        .and_then(|n| n.parse().ok())
        .ok_or(ProofError::Malformed("no index line"))?;
    let mut path = Vec::new();
    for line in lines {
        let bytes: [u8; 32] = BASE64
            .decode(line)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(ProofError::Malformed("bad hash line"))?;
        path.push(Hash(bytes));
    }
    let verifier = StandardVerifier::new(verifier_key).map_err(|_| ProofError::Signature)?;
    let note = Note::from_bytes(checkpoint.as_bytes())
        .map_err(|_| ProofError::Malformed("bad checkpoint note"))?;
    note.verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|_| ProofError::Signature)?;
    let cp =
        Checkpoint::from_bytes(note.text()).map_err(|_| ProofError::Malformed("bad checkpoint"))?;
    tlog_tiles::check_record(
        &path,
        cp.size(),
        *cp.hash(),
        index,
        tlog_tiles::record_hash(&entry),
    )
    .map_err(|_| ProofError::Invalid)?;
    Ok(ProvenEntry {
        origin: cp.origin().to_owned(),
        index,
        size: cp.size(),
        entry,
    })
}
