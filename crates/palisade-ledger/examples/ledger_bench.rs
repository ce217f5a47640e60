//! Ledger throughput: appends through the journal (strict durability,
//! group commit) from many concurrent tasks, then `verify` over the result.
//!
//!     cargo run --release -p palisade-ledger --example ledger_bench -- [entries] [tasks]
//!
//! Entries are ~450-byte canonical JSON objects shaped like
//! `request.received`. Runs in a temporary directory.

use std::sync::Arc;
use std::time::Instant;

use palisade_ledger::{Durability, Journal, JournalConfig, LedgerKey, verify};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let total: u64 = args.next().map_or(Ok(200_000), |a| a.parse())?;
    let tasks: u64 = args.next().map_or(Ok(64), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let key = LedgerKey::generate("bench.example/palisade/n1")?;
    let vkey = key.verifier_key().to_owned();
    let config = JournalConfig {
        durability: Durability::Strict,
        checkpoint_interval: std::time::Duration::from_secs(1),
        head_file: None,
    };
    let (journal, _) = Journal::open(dir.path(), key, config)?;
    let journal = Arc::new(journal);

    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let journal = Arc::clone(&journal);
        handles.push(tokio::spawn(async move {
            let mut i = t;
            while i < total {
                let entry = format!(
                    r#"{{"app":"chatbot","config_hash":"0de17dcf2f2e4598295500f67d0a43fb125ef785d05b7b4473522b641b07215b","dialect":"openai","endpoint":"/v1/chat/completions","env":"prod","key_id":"vrmg9hhbkfys","kind":"request.received","model":"gpt-4o-mini","node":"bench.example/palisade/n1","provider":"openai","request_id":"01a205ca-10db-78ac-8252-{i:012}","schema":"palisade.audit/v1","source":"10.1.2.3","stream":false,"tenant":"acme","time":"2026-11-23T00:24:18.396388Z","upstream_model":"gpt-4o-mini"}}"#
                );
                journal.append(entry.into_bytes()).await.map_err(|e| e.to_string())?;
                i += tasks;
            }
            Ok::<_, String>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    let appended = started.elapsed();
    journal.checkpoint().await?;
    let checkpointed = started.elapsed();
    drop(journal);

    let t = Instant::now();
    let verified = verify(dir.path(), &vkey)?;
    let verify_time = t.elapsed();
    println!(
        "appended {total} entries from {tasks} tasks in {:.2}s: {:.0} entries/s durable (strict, group commit); all in tiles + checkpoint after {:.2}s",
        appended.as_secs_f64(),
        total as f64 / appended.as_secs_f64(),
        checkpointed.as_secs_f64()
    );
    println!(
        "verify: {} entries, {} tiles in {:.2}s: {:.0} entries/min",
        verified.head.size,
        verified.tiles_checked,
        verify_time.as_secs_f64(),
        verified.head.size as f64 / verify_time.as_secs_f64() * 60.0
    );
    Ok(())
}
