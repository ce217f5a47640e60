use sha2::{Digest, Sha256};
use tlog_tiles::{Hash, HashReader};

use super::*;

/// RFC 6962 §2.1, written out the slow way.
fn naive_root(entries: &[Vec<u8>]) -> [u8; 32] {
    match entries.len() {
        0 => Sha256::digest(b"").into(),
        1 => {
            let mut h = Sha256::new();
            h.update([0u8]);
            h.update(&entries[0]);
            h.finalize().into()
        }
        n => {
            let k = n.next_power_of_two() / 2;
            let k = if k == n { n / 2 } else { k };
            let mut h = Sha256::new();
            h.update([1u8]);
            h.update(naive_root(&entries[..k]));
            h.update(naive_root(&entries[k..]));
            h.finalize().into()
        }
    }
}

fn entry(i: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"schema": "palisade.audit/v1", "seq": i, "pad": "x".repeat((i % 37) as usize)}))
        .unwrap()
}

struct Memory(Vec<Hash>);

impl HashReader for Memory {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        Ok(indexes.iter().map(|&i| self.0[i as usize]).collect())
    }
}

#[test]
fn tree_hash_matches_a_naive_merkle_tree_for_every_size_up_to_1024() {
    let entries: Vec<Vec<u8>> = (0..1024).map(entry).collect();
    let mut stored = Memory(Vec::new());
    for (n, e) in entries.iter().enumerate() {
        let new = tlog_tiles::stored_hashes(n as u64, e, &stored).unwrap();
        stored.0.extend(new);
        let size = n + 1;
        let root = tlog_tiles::tree_hash(size as u64, &stored).unwrap();
        assert_eq!(root.0, naive_root(&entries[..size]), "size {size}");
    }
}

fn key(name: &str) -> LedgerKey {
    LedgerKey::generate(name).unwrap()
}

/// Appends `total` entries in batches whose sizes cycle through `batches`.
fn build(dir: &std::path::Path, total: u64, batches: &[u64]) -> (Ledger, Vec<Vec<u8>>) {
    let mut ledger = Ledger::open(dir, key("test.example/palisade/n1")).unwrap();
    let mut all = Vec::new();
    let mut i = 0;
    let mut b = 0;
    while i < total {
        let take = batches[b % batches.len()].min(total - i);
        let batch: Vec<Vec<u8>> = (i..i + take).map(entry).collect();
        let first = ledger.append(&batch).unwrap();
        assert_eq!(first, i);
        all.extend(batch);
        i += take;
        b += 1;
        assert_eq!(ledger.root().0, naive_root(&all), "size {i}");
    }
    (ledger, all)
}

#[test]
fn written_ledgers_verify_at_tile_boundaries_and_across_batches() {
    for (total, batches) in [
        (1u64, &[1u64][..]),
        (255, &[1, 7, 30][..]),
        (256, &[256][..]),
        (257, &[100, 100, 57][..]),
        (700, &[3, 250, 1, 64][..]),
        (1100, &[511, 2, 300][..]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, all) = build(dir.path(), total, batches);
        let verified = verify(dir.path(), ledger.verifier_key()).unwrap();
        assert_eq!(verified.head.size, total);
        assert_eq!(verified.head.root.0, naive_root(&all));
        assert_eq!(verified.head.origin, "test.example/palisade/n1");
        // Superseded partial tiles are gone; the current ones remain.
        let last = total - (total % 256);
        if total % 256 != 0 {
            assert!(
                dir.path()
                    .join(layout::tile_path(None, last / 256, total % 256))
                    .exists()
            );
        }
    }
}

#[test]
fn another_key_can_neither_open_nor_verify_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = build(dir.path(), 300, &[300]);
    let vkey = ledger.verifier_key().to_owned();
    let checkpoint = ledger.checkpoint().unwrap();
    drop(ledger);
    let impostor = key("test.example/palisade/n1");
    let impostor_vkey = impostor.verifier_key().to_owned();
    assert!(matches!(
        Ledger::open(dir.path(), impostor),
        Err(LedgerError::BadCheckpoint)
    ));
    assert!(verify(dir.path(), &impostor_vkey).is_err());
    let (head, bytes) = read_checkpoint(dir.path(), &vkey).unwrap().unwrap();
    assert_eq!(head.size, 300);
    assert_eq!(bytes, checkpoint);
}

#[test]
fn reopening_with_the_same_key_appends_consistently() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("ledger.key");
    let ledger_dir = dir.path().join("ledger");
    let mut all: Vec<Vec<u8>> = Vec::new();
    for round in 0..4u64 {
        let k = LedgerKey::load_or_create(&key_file, "test.example/palisade/n1").unwrap();
        let mut ledger = Ledger::open(&ledger_dir, k).unwrap();
        assert_eq!(ledger.size(), all.len() as u64);
        let batch: Vec<Vec<u8>> = (0..97).map(|i| entry(round * 1000 + i)).collect();
        ledger.append(&batch).unwrap();
        all.extend(batch);
        assert_eq!(ledger.root().0, naive_root(&all));
    }
    let k = LedgerKey::load(&key_file).unwrap();
    verify(&ledger_dir, k.verifier_key()).unwrap();
}

fn flip_byte(path: &std::path::Path, at: usize) {
    let mut data = std::fs::read(path).unwrap();
    data[at] ^= 0x01;
    std::fs::write(path, data).unwrap();
}

#[test]
fn tampering_with_an_entry_names_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = build(dir.path(), 600, &[600]);
    // Bundle 1 holds entries 256..512; change a byte inside its 4th entry.
    let bundle = dir.path().join(layout::tile_path(None, 1, 256));
    let data = std::fs::read(&bundle).unwrap();
    let entries = layout::decode_bundle(&data).unwrap();
    let offset: usize = entries[..3].iter().map(|e| e.len() + 2).sum::<usize>() + 2 + 5;
    flip_byte(&bundle, offset);
    match verify(dir.path(), ledger.verifier_key()) {
        Err(VerifyError::Mismatch { index, .. }) => assert_eq!(index, 259),
        other => panic!("tampering not caught: {other:?}"),
    }
}

#[test]
fn tampering_with_a_hash_tile_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = build(dir.path(), 600, &[600]);
    // Level-0 tile 0, the hash of entry 17.
    flip_byte(
        &dir.path().join(layout::tile_path(Some(0), 0, 256)),
        17 * 32 + 3,
    );
    match verify(dir.path(), ledger.verifier_key()) {
        Err(VerifyError::Mismatch { index, .. }) => assert_eq!(index, 17),
        other => panic!("tampering not caught: {other:?}"),
    }
}

#[test]
fn a_removed_entry_or_forged_checkpoint_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (ledger, _) = build(dir.path(), 40, &[40]);
    let vkey = ledger.verifier_key().to_owned();

    // Drop the last entry from the partial bundle.
    let bundle = dir.path().join(layout::tile_path(None, 0, 40));
    let data = std::fs::read(&bundle).unwrap();
    let entries = layout::decode_bundle(&data).unwrap();
    let shorter = layout::encode_bundle(entries[..39].iter().copied());
    std::fs::write(&bundle, &shorter).unwrap();
    assert!(matches!(
        verify(dir.path(), &vkey),
        Err(VerifyError::MalformedBundle {
            bundle: 0,
            index: 0
        })
    ));
    std::fs::write(&bundle, &data).unwrap();
    verify(dir.path(), &vkey).unwrap();

    // Change the size in the checkpoint text: the signature no longer holds.
    let cp = dir.path().join("checkpoint");
    let text = std::fs::read_to_string(&cp).unwrap();
    std::fs::write(&cp, text.replacen("\n40\n", "\n39\n", 1)).unwrap();
    assert!(matches!(
        verify(dir.path(), &vkey),
        Err(VerifyError::Checkpoint(LedgerError::BadCheckpoint))
    ));

    // Another key's verifier refuses the genuine checkpoint.
    std::fs::write(&cp, text).unwrap();
    let other = key("test.example/palisade/n1");
    assert!(verify(dir.path(), other.verifier_key()).is_err());
}

#[test]
fn oversized_entries_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(dir.path(), key("test.example/palisade/n1")).unwrap();
    let big = vec![b'x'; 70_000];
    assert!(matches!(
        ledger.append(&[big]),
        Err(LedgerError::EntryTooLarge(70_000))
    ));
    assert_eq!(ledger.size(), 0);
    assert!(!dir.path().join("checkpoint").exists());
}

/// Go's reference packages (golang.org/x/mod/sumdb/note and tlog) verify
/// what we write: the checkpoint signature, every tile against the root,
/// and an inclusion proof for every entry — and refuse a tampered copy.
/// Needs `PALISADE_GO` (a Go toolchain with x/mod in its GOPATH), which
/// scripts/test sets when it finds one.
#[test]
fn go_reference_packages_verify_our_ledger() {
    let Ok(go) = std::env::var("PALISADE_GO") else {
        eprintln!(
            "SKIPPED go_reference_packages_verify_our_ledger: PALISADE_GO is not set (scripts/test sets it when Go and golang.org/x/mod are installed)"
        );
        return;
    };
    let gopath =
        std::env::var("PALISADE_GOPATH").unwrap_or_else(|_| "/usr/share/gocode".to_owned());
    let program = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/interop/verify_ledger.go"
    );
    let work = tempfile::tempdir().unwrap();
    let binary = work.path().join("verify_ledger");
    let build = std::process::Command::new(&go)
        .args(["build", "-o"])
        .arg(&binary)
        .arg(program)
        .env("GO111MODULE", "off")
        .env("GOPATH", &gopath)
        .env("GOCACHE", work.path().join("cache"))
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&build.stderr)
    );

    // Enough entries for partial tiles at levels 0, 1 and 2.
    let dir = tempfile::tempdir().unwrap();
    let (ledger, all) = build_ledger_for_interop(dir.path());
    let run = |dir: &std::path::Path| {
        std::process::Command::new(&binary)
            .arg(dir)
            .arg(ledger.verifier_key())
            .output()
            .unwrap()
    };
    let out = run(dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "Go refused our ledger: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("OK {} ", all.len())),
        "{stdout}"
    );

    // Go checks our C2SP tlog-proof files too, and refuses a doctored one.
    for index in [0u64, 65_535, 65_600, 65_900] {
        let text = crate::proof::prove(dir.path(), ledger.verifier_key(), index).unwrap();
        let file = work.path().join(format!("{index}.tlog-proof"));
        std::fs::write(&file, &text).unwrap();
        let out = std::process::Command::new(&binary)
            .arg("-proof")
            .arg(&file)
            .arg(ledger.verifier_key())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "Go refused proof {index}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("OK index {index}")
        );
        let doctored = text.replace(
            &format!("index {index}\n"),
            &format!("index {}\n", index + 1),
        );
        std::fs::write(&file, doctored).unwrap();
        let out = std::process::Command::new(&binary)
            .arg("-proof")
            .arg(&file)
            .arg(ledger.verifier_key())
            .output()
            .unwrap();
        assert!(!out.status.success(), "Go accepted a doctored proof");
    }

    // One flipped byte in an entry: Go's proof check fails.
    let bundle = dir.path().join(layout::tile_path(None, 3, 256));
    let mut data = std::fs::read(&bundle).unwrap();
    data[40] ^= 1;
    std::fs::write(&bundle, data).unwrap();
    let out = run(dir.path());
    assert!(!out.status.success(), "Go accepted a tampered ledger");
}

fn build_ledger_for_interop(dir: &std::path::Path) -> (Ledger, Vec<Vec<u8>>) {
    let mut ledger = Ledger::open(dir, key("interop.example/palisade/n1")).unwrap();
    let mut all = Vec::new();
    for (start, len) in [(0u64, 65_600u64), (65_600, 1), (65_601, 300)] {
        let batch: Vec<Vec<u8>> = (start..start + len).map(entry).collect();
        ledger.append(&batch).unwrap();
        all.extend(batch);
    }
    (ledger, all)
}

mod journal {
    use super::*;
    use crate::wal::Wal;

    fn config(durability: Durability) -> JournalConfig {
        JournalConfig {
            durability,
            checkpoint_interval: Duration::from_millis(50),
            head_file: None,
        }
    }

    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_get_contiguous_sequence_numbers_and_verify() {
        for durability in [Durability::Strict, Durability::Relaxed] {
            let dir = tempfile::tempdir().unwrap();
            let (journal, recovery) = Journal::open(
                dir.path(),
                key("test.example/palisade/n1"),
                config(durability),
            )
            .unwrap();
            assert_eq!(recovery, Recovery::default());
            let journal = std::sync::Arc::new(journal);
            let mut tasks = Vec::new();
            for i in 0..300u64 {
                let j = std::sync::Arc::clone(&journal);
                tasks.push(tokio::spawn(async move {
                    (j.append(entry(i)).await.unwrap(), i)
                }));
            }
            let mut seqs = Vec::new();
            for t in tasks {
                seqs.push(t.await.unwrap());
            }
            journal.submit(entry(999)).unwrap();
            let checkpoint = journal.checkpoint().await.unwrap();
            assert!(String::from_utf8_lossy(&checkpoint).contains("\n301\n"));
            let verified = verify(dir.path(), journal.verifier_key()).unwrap();
            assert_eq!(verified.head.size, 301);
            // Every append's number is where its entry landed.
            let recorded = crate::proof::read_entries(dir.path(), 301, 0, 301).unwrap();
            seqs.sort_unstable();
            assert_eq!(
                seqs.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                (0..300).collect::<Vec<_>>(),
                "{durability:?}"
            );
            for (seq, i) in seqs {
                assert_eq!(recorded[seq as usize].1, entry(i), "{durability:?}");
            }
        }
    }

    /// An answered append is in the write-ahead file: a process that dies
    /// right after loses nothing, whatever the durability (strict adds the
    /// sync that a machine crash needs).
    #[tokio::test]
    async fn an_answered_append_is_already_in_the_write_ahead_file() {
        for durability in [Durability::Strict, Durability::Relaxed] {
            let dir = tempfile::tempdir().unwrap();
            let (journal, _) = Journal::open(
                dir.path(),
                key("test.example/palisade/n1"),
                JournalConfig {
                    durability,
                    checkpoint_interval: Duration::from_secs(3600),
                    head_file: None,
                },
            )
            .unwrap();
            for i in 0..5 {
                assert_eq!(journal.append(entry(i)).await.unwrap(), i);
            }
            journal.submit(entry(5)).unwrap();
            // Read the segment as recovery would, with the journal still
            // open and its thread asleep until the next checkpoint.
            let (_, recovered) = Wal::open(&crate::journal::segment_path(dir.path(), 0)).unwrap();
            assert_eq!(
                recovered.frames,
                (0..6).map(|i| (i, entry(i))).collect::<Vec<_>>(),
                "{durability:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_journal, _) =
            Journal::open(dir.path(), key("a.example/p/n"), config(Durability::Strict)).unwrap();
        assert!(matches!(
            Journal::open(dir.path(), key("a.example/p/n"), config(Durability::Strict)),
            Err(OpenError::Locked(_))
        ));
    }

    #[tokio::test]
    async fn entries_in_the_write_ahead_file_are_recovered_and_a_torn_tail_cut() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("ledger.key");
        let ledger_dir = dir.path().join("ledger");
        let k = || LedgerKey::load_or_create(&key_file, "test.example/palisade/n1").unwrap();
        {
            let (journal, _) = Journal::open(&ledger_dir, k(), config(Durability::Strict)).unwrap();
            for i in 0..10 {
                journal.append(entry(i)).await.unwrap();
            }
            journal.checkpoint().await.unwrap();
        }
        // As if the process died after syncing entries 10..13 to the
        // write-ahead file and midway through writing entry 13.
        {
            let (mut wal, _) = Wal::open(&crate::journal::segment_path(&ledger_dir, 10)).unwrap();
            let e: Vec<Vec<u8>> = (10..13).map(entry).collect();
            wal.write(&[(10, &e[0]), (11, &e[1]), (12, &e[2])]).unwrap();
            wal.sync().unwrap();
        }
        let segment = crate::journal::segment_path(&ledger_dir, 10);
        let mut data = std::fs::read(&segment).unwrap();
        data.extend_from_slice(&13u64.to_le_bytes());
        data.extend_from_slice(&[9, 9, 9]);
        std::fs::write(&segment, data).unwrap();

        let (journal, recovery) =
            Journal::open(&ledger_dir, k(), config(Durability::Strict)).unwrap();
        assert_eq!(
            recovery,
            Recovery {
                size: 13,
                replayed: 3,
                truncated_bytes: 11
            }
        );
        assert_eq!(journal.append(entry(13)).await.unwrap(), 13);
        journal.checkpoint().await.unwrap();
        // Checkpointed segments are gone; only the current one remains.
        let segments: Vec<_> = std::fs::read_dir(&ledger_dir)
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.starts_with("wal-"))
            .collect();
        assert_eq!(segments, vec![format!("wal-{:020}", 14)]);
        let all: Vec<Vec<u8>> = (0..14).map(entry).collect();
        let verified = verify(&ledger_dir, journal.verifier_key()).unwrap();
        assert_eq!(verified.head.root.0, naive_root(&all));
    }

    #[tokio::test]
    async fn relaxed_durability_records_too_and_drop_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("test.example/palisade/n1");
        let vkey = k.verifier_key().to_owned();
        let (journal, _) = Journal::open(
            dir.path(),
            k,
            JournalConfig {
                durability: Durability::Relaxed,
                checkpoint_interval: Duration::from_secs(3600),
                head_file: None,
            },
        )
        .unwrap();
        for i in 0..20 {
            assert_eq!(journal.append(entry(i)).await.unwrap(), i);
        }
        assert!(matches!(
            journal.submit(vec![0; 70_000]),
            Err(JournalError::TooLarge(70_000))
        ));
        drop(journal);
        assert_eq!(verify(dir.path(), &vkey).unwrap().head.size, 20);
    }
}

mod proofs {
    use super::*;
    use crate::proof::{self, ProofError};

    #[test]
    fn proofs_check_for_every_kind_of_position_and_tampering_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, all) = build(dir.path(), 700, &[300, 400]);
        let vkey = ledger.verifier_key().to_owned();
        for index in [0u64, 1, 255, 256, 511, 512, 698, 699] {
            let text = proof::prove(dir.path(), &vkey, index).unwrap();
            assert!(text.starts_with("c2sp.org/tlog-proof@v1\nextra "), "{text}");
            let proven = proof::check(&text, &vkey).unwrap();
            assert_eq!(proven.index, index);
            assert_eq!(proven.size, 700);
            assert_eq!(proven.entry, all[index as usize]);
        }
        assert!(matches!(
            proof::prove(dir.path(), &vkey, 700),
            Err(ProofError::OutOfRange {
                index: 700,
                size: 700
            })
        ));

        let text = proof::prove(dir.path(), &vkey, 300).unwrap();
        // Another index.
        let moved = text.replace("index 300\n", "index 301\n");
        assert!(matches!(
            proof::check(&moved, &vkey),
            Err(ProofError::Invalid)
        ));
        // Another entry.
        let other = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &all[301]);
        let extra_line = text.lines().nth(1).unwrap();
        let swapped = text.replace(extra_line, &format!("extra {other}"));
        assert!(matches!(
            proof::check(&swapped, &vkey),
            Err(ProofError::Invalid)
        ));
        // A changed audit-path hash.
        let hash_line = text.lines().nth(3).unwrap();
        let mut bad = hash_line.to_owned().into_bytes();
        bad[0] = if bad[0] == b'A' { b'B' } else { b'A' };
        let broken = text.replace(hash_line, std::str::from_utf8(&bad).unwrap());
        assert!(proof::check(&broken, &vkey).is_err());
        // Another key.
        let impostor = key("test.example/palisade/n1");
        assert!(matches!(
            proof::check(&text, impostor.verifier_key()),
            Err(ProofError::Signature)
        ));
    }
}

#[test]
fn earlier_checkpoints_must_be_prefixes_of_the_current_log() {
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("ledger.key");
    let k = LedgerKey::load_or_create(&key_file, "test.example/palisade/n1").unwrap();
    let vkey = k.verifier_key().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(dir.path(), k).unwrap();
    ledger
        .append(&(0..300).map(entry).collect::<Vec<_>>())
        .unwrap();
    let at_300 = ledger.checkpoint().unwrap();
    ledger
        .append(&(300..420).map(entry).collect::<Vec<_>>())
        .unwrap();
    let at_420 = ledger.checkpoint().unwrap();
    assert_eq!(
        verify_since(dir.path(), &vkey, Some(&at_300))
            .unwrap()
            .head
            .size,
        420
    );
    verify_since(dir.path(), &vkey, Some(&at_420)).unwrap();

    // The operator, holding the same key, rebuilds the log with entry 7
    // changed. It verifies on its own — but not against the checkpoint an
    // auditor saved earlier.
    let forged = tempfile::tempdir().unwrap();
    let mut entries: Vec<Vec<u8>> = (0..420).map(entry).collect();
    entries[7] = b"{\"rewritten\":true}".to_vec();
    let mut rewritten = Ledger::open(forged.path(), LedgerKey::load(&key_file).unwrap()).unwrap();
    rewritten.append(&entries).unwrap();
    verify(forged.path(), &vkey).unwrap();
    assert!(matches!(
        verify_since(forged.path(), &vkey, Some(&at_300)),
        Err(VerifyError::Inconsistent {
            size: 300,
            current: 420
        })
    ));
    // A checkpoint from another key is refused as evidence.
    let other = key("test.example/palisade/n1");
    let stranger = tempfile::tempdir().unwrap();
    let mut l = Ledger::open(stranger.path(), other).unwrap();
    l.append(&[entry(0)]).unwrap();
    assert!(matches!(
        verify_since(dir.path(), &vkey, Some(&l.checkpoint().unwrap())),
        Err(VerifyError::EarlierCheckpoint)
    ));
}

#[tokio::test]
async fn an_outage_refuses_appends_and_is_recorded_when_it_ends() {
    for durability in [Durability::Strict, Durability::Relaxed] {
        outage_is_recorded(durability).await;
    }
}

async fn outage_is_recorded(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let k = key("test.example/palisade/n1");
    let vkey = k.verifier_key().to_owned();
    let config = JournalConfig {
        durability,
        ..JournalConfig::default()
    };
    let (journal, _) = Journal::open(dir.path(), k, config).unwrap();
    assert_eq!(journal.append(entry(0)).await.unwrap(), 0);
    journal.fail_writes(true);
    for i in 1..4 {
        assert!(matches!(
            journal.append(entry(i)).await,
            Err(JournalError::Write(_))
        ));
    }
    journal.fail_writes(false);
    // Appending resumes by itself, and the outage goes on record right
    // after the first append that succeeds.
    assert_eq!(journal.append(entry(4)).await.unwrap(), 1);
    journal.checkpoint().await.unwrap();
    verify(dir.path(), &vkey).unwrap();
    let size = 4;
    let entries: Vec<serde_json::Value> = crate::proof::read_entries(dir.path(), size, 0, size)
        .unwrap()
        .into_iter()
        .map(|(_, e)| serde_json::from_slice(&e).unwrap())
        .collect();
    assert_eq!(entries[2]["kind"], "ledger.fault");
    assert_eq!(entries[2]["failed_appends"], 3);
    assert!(entries[2]["error"].as_str().unwrap().contains("injected"));
    assert_eq!(entries[3]["kind"], "ledger.fault_cleared");
    assert_eq!(entries[3]["schema"], "palisade.audit/v1");
    assert_eq!(entries[3]["node"], "test.example/palisade/n1");
}

#[test]
fn exports_carry_a_checkable_proof_for_every_entry_in_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("test.example/palisade/n1");
    let vkey = k.verifier_key().to_owned();
    let mut ledger = Ledger::open(dir.path(), k).unwrap();
    let day = |i: u64| match i {
        0..50 => "2026-11-21",
        50..120 => "2026-11-22",
        _ => "2026-11-23",
    };
    let entries: Vec<Vec<u8>> = (0..130)
        .map(|i| {
            canonical::to_canonical(&serde_json::json!({
                "schema": "palisade.audit/v1", "kind": "request.received", "seq_hint": i,
                "time": format!("{}T{:02}:00:00.000000Z", day(i), i % 24),
            }))
            .unwrap()
        })
        .collect();
    ledger.append(&entries).unwrap();

    let out = tempfile::tempdir().unwrap();
    let exported =
        export::export(dir.path(), &vkey, "2026-11-22", "2026-11-23", out.path()).unwrap();
    assert_eq!(exported.entries, 70);
    assert_eq!(export::check(out.path(), &vkey).unwrap().entries, 70);
    let text = std::fs::read_to_string(out.path().join("entries.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["seq"], 50);

    // One changed field in one exported entry: its proof no longer holds.
    std::fs::write(
        out.path().join("entries.jsonl"),
        text.replacen("\"seq_hint\":60", "\"seq_hint\":61", 1),
    )
    .unwrap();
    assert!(matches!(
        export::check(out.path(), &vkey),
        Err(crate::proof::ProofError::Invalid)
    ));
    // Another key's verifier refuses the checkpoint.
    std::fs::write(out.path().join("entries.jsonl"), &text).unwrap();
    assert!(export::check(out.path(), key("x.example/p/n").verifier_key()).is_err());
}

/// The RFC 6962 reference vectors used by Certificate Transparency's and
/// transparency-dev's Merkle tests: eight leaves and the root of each
/// prefix of them.
#[test]
fn rfc6962_reference_roots() {
    let leaves: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        vec![0x10],
        vec![0x20, 0x21],
        vec![0x30, 0x31],
        vec![0x40, 0x41, 0x42, 0x43],
        vec![0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
        vec![
            0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
            0x6e, 0x6f,
        ],
    ];
    let roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(dir.path(), key("vectors.example/p/n")).unwrap();
    for (i, leaf) in leaves.iter().enumerate() {
        ledger.append(std::slice::from_ref(leaf)).unwrap();
        let hex: String = ledger.root().0.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, roots[i], "size {}", i + 1);
    }
}

#[tokio::test]
async fn a_rolled_back_or_substituted_ledger_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let key_file = data.path().join("ledger.key");
    let ledger_dir = data.path().join("ledger");
    let config = || JournalConfig {
        head_file: Some(data.path().join("ledger.head")),
        ..JournalConfig::default()
    };
    let k = || LedgerKey::load_or_create(&key_file, "test.example/palisade/n1").unwrap();
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        let _ = std::fs::remove_dir_all(to);
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success());
    };
    let backup = data.path().join("backup");
    {
        let (journal, _) = Journal::open(&ledger_dir, k(), config()).unwrap();
        for i in 0..5 {
            journal.append(entry(i)).await.unwrap();
        }
        journal.checkpoint().await.unwrap();
        drop(journal);
        copy(&ledger_dir, &backup);
        let (journal, _) = Journal::open(&ledger_dir, k(), config()).unwrap();
        for i in 5..8 {
            journal.append(entry(i)).await.unwrap();
        }
    }
    // An older copy of the ledger directory would let the key sign new
    // roots for sizes 6..8 again.
    let current = data.path().join("current");
    copy(&ledger_dir, &current);
    copy(&backup, &ledger_dir);
    assert!(matches!(
        Journal::open(&ledger_dir, k(), config()),
        Err(OpenError::RolledBack {
            found: 5,
            signed: 8
        })
    ));
    // A ledger of the same size with other entries, signed with the same key.
    let _ = std::fs::remove_dir_all(&ledger_dir);
    {
        let mut other = Ledger::open(&ledger_dir, k()).unwrap();
        other
            .append(&(100..108).map(entry).collect::<Vec<_>>())
            .unwrap();
    }
    assert!(matches!(
        Journal::open(&ledger_dir, k(), config()),
        Err(OpenError::Forked { size: 8 })
    ));
    // The genuine directory opens again.
    copy(&current, &ledger_dir);
    let (journal, recovery) = Journal::open(&ledger_dir, k(), config()).unwrap();
    assert_eq!(recovery.size, 8);
    drop(journal);
}

/// Damaged inputs from outside (a write-ahead file after a crash, bundles,
/// proofs and checkpoints handed over by others) give errors, never panics.
mod robustness {
    use super::*;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn damage(&mut self, input: &[u8]) -> Vec<u8> {
            let mut out = input.to_vec();
            for _ in 0..=self.below(3) {
                if out.is_empty() {
                    break;
                }
                let i = self.below(out.len());
                match self.below(3) {
                    0 => out[i] = self.next() as u8,
                    1 => out.truncate(i),
                    _ => {
                        out.remove(i);
                    }
                }
            }
            out
        }
    }

    #[test]
    fn damaged_write_ahead_files_recover_a_valid_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let frames: Vec<Vec<u8>> = (0..6).map(entry).collect();
        {
            let (mut wal, _) = crate::wal::Wal::open(&path).unwrap();
            let f: Vec<(u64, &[u8])> = frames
                .iter()
                .enumerate()
                .map(|(i, e)| (i as u64, e.as_slice()))
                .collect();
            wal.write(&f).unwrap();
            wal.sync().unwrap();
        }
        let intact = std::fs::read(&path).unwrap();
        let mut rng = Rng(7);
        // Each damaged file is cut back and synced: a few hundred suffice.
        for _ in 0..300 {
            std::fs::write(&path, rng.damage(&intact)).unwrap();
            let (_, recovered) = crate::wal::Wal::open(&path).unwrap();
            // Whatever survives is an exact prefix of what was written.
            for (i, (seq, e)) in recovered.frames.iter().enumerate() {
                assert_eq!(*seq, i as u64);
                assert_eq!(e, &frames[i]);
            }
        }
    }

    #[test]
    fn damaged_bundles_proofs_and_checkpoints_are_refused_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, all) = build(dir.path(), 40, &[40]);
        let vkey = ledger.verifier_key().to_owned();
        let bundle = layout::encode_bundle(all.iter().map(Vec::as_slice));
        let proof_text = crate::proof::prove(dir.path(), &vkey, 17).unwrap();
        let checkpoint = ledger.checkpoint().unwrap();
        let mut rng = Rng(11);
        for round in 0..2_000 {
            let _ = layout::decode_bundle(&rng.damage(&bundle));
            let damaged = rng.damage(proof_text.as_bytes());
            if let Ok(text) = std::str::from_utf8(&damaged)
                && let Ok(p) = crate::proof::check(text, &vkey)
            {
                // Only an undamaged meaning can still check out.
                assert_eq!(p.entry, all[p.index as usize]);
            }
            if round % 10 == 0 {
                let _ =
                    crate::verify::verify_since(dir.path(), &vkey, Some(&rng.damage(&checkpoint)));
            }
        }
    }
}
