//! Exports for auditors: the entries of a time range, each with its
//! inclusion proof under one signed checkpoint, so that the recipient can
//! check every entry without the rest of the log (which may hold other
//! tenants' metadata).
//!
//! An export directory holds:
//!
//! ```text
//! checkpoint        the signed checkpoint every proof is against
//! entries.jsonl     one line per entry: {"seq": N, "entry": {...}, "proof": ["<base64 hash>", ...]}
//! ```
//!
//! [`check`] (or `palisade audit check-export`) verifies the checkpoint's
//! signature and every line's RFC 6962 inclusion proof; the entry bytes that
//! were hashed are the canonical form of `entry`.

use std::io::{BufRead, Write};
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::{Checkpoint, Hash, TileHashReader};

use crate::canonical::to_canonical;
use crate::log::read_checkpoint;
use crate::proof::{DirTiles, ProofError, read_entries};

/// What an export holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exported {
    pub entries: u64,
    pub size: u64,
}

/// Writes the entries whose `time` is in `[from, to)` to `out`. Times are
/// compared as RFC 3339 text, so `2026-11-22` means the start of that day.
pub fn export(
    dir: &Path,
    verifier_key: &str,
    from: &str,
    to: &str,
    out: &Path,
) -> Result<Exported, ProofError> {
    let io = |e: std::io::Error| ProofError::Read(e.to_string());
    let (head, checkpoint) = read_checkpoint(dir, verifier_key)?.ok_or(ProofError::NoCheckpoint)?;
    let tiles = DirTiles(dir);
    let reader = TileHashReader::new(head.size, head.root, &tiles);
    std::fs::create_dir_all(out).map_err(io)?;
    let mut lines =
        std::io::BufWriter::new(std::fs::File::create(out.join("entries.jsonl")).map_err(io)?);
    let mut count = 0;
    let mut start = 0;
    while start < head.size {
        let end = (start + 4096).min(head.size);
        for (seq, bytes) in read_entries(dir, head.size, start, end)? {
            let entry: Value =
                serde_json::from_slice(&bytes).map_err(|e| ProofError::Read(e.to_string()))?;
            let time = entry["time"].as_str().unwrap_or_default();
            if time < from || time >= to {
                continue;
            }
            let path = tlog_tiles::prove_record(head.size, seq, &reader)
                .map_err(|e| ProofError::Read(e.to_string()))?;
            let proof: Vec<String> = path.iter().map(|h| BASE64.encode(h.0)).collect();
            let line = json!({"seq": seq, "entry": entry, "proof": proof});
            writeln!(lines, "{line}").map_err(io)?;
            count += 1;
        }
        start = end;
    }
    lines.flush().map_err(io)?;
    std::fs::write(out.join("checkpoint"), checkpoint).map_err(io)?;
    Ok(Exported {
        entries: count,
        size: head.size,
    })
}

/// Checks an export against `verifier_key`; returns how many entries it
/// holds. Fails on the first entry whose proof does not hold.
pub fn check(out: &Path, verifier_key: &str) -> Result<Exported, ProofError> {
    let io = |e: std::io::Error| ProofError::Read(e.to_string());
    let checkpoint = std::fs::read(out.join("checkpoint")).map_err(io)?;
    let verifier = StandardVerifier::new(verifier_key).map_err(|_| ProofError::Signature)?;
    let note =
        Note::from_bytes(&checkpoint).map_err(|_| ProofError::Malformed("bad checkpoint note"))?;
    note.verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|_| ProofError::Signature)?;
    let cp =
        Checkpoint::from_bytes(note.text()).map_err(|_| ProofError::Malformed("bad checkpoint"))?;
    let file = std::fs::File::open(out.join("entries.jsonl")).map_err(io)?;
    let mut count = 0;
    for line in std::io::BufReader::new(file).lines() {
        let line: Value = serde_json::from_str(&line.map_err(io)?)
            .map_err(|_| ProofError::Malformed("bad line"))?;
        let seq = line["seq"]
            .as_u64()
            .ok_or(ProofError::Malformed("no seq"))?;
        let entry = to_canonical(&line["entry"])
            .map_err(|_| ProofError::Malformed("entry not canonical"))?;
        let mut path = Vec::new();
        for h in line["proof"]
            .as_array()
            .ok_or(ProofError::Malformed("no proof"))?
        {
            let bytes: [u8; 32] = h
                .as_str()
                .and_then(|s| BASE64.decode(s).ok())
                .and_then(|b| b.try_into().ok())
                .ok_or(ProofError::Malformed("bad proof hash"))?;
            path.push(Hash(bytes));
        }
        tlog_tiles::check_record(
            &path,
            cp.size(),
            *cp.hash(),
            seq,
            tlog_tiles::record_hash(&entry),
        )
        .map_err(|_| ProofError::Invalid)?;
        count += 1;
    }
    Ok(Exported {
        entries: count,
        size: cp.size(),
    })
}
