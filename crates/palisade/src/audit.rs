//! `palisade audit ...`: the ledger from the command line.

use anyhow::{Context, bail};
use palisade_ledger::LedgerKey;
use palisade_server::audit::{key_path, ledger_dir};
use serde_json::json;

use crate::cli::AuditCommand;

/// The local ledger: the data directory, the ledger directory in it, and
/// the verifier key of the key kept there.
struct Local {
    data_dir: std::path::PathBuf,
    dir: std::path::PathBuf,
    vkey: String,
}

impl Local {
    fn of(store: &crate::cli::StoreArgs) -> anyhow::Result<Self> {
        let data_dir = store.data_dir()?;
        let vkey = LedgerKey::load(&key_path(&data_dir))
            .with_context(
                || "no ledger key yet: `palisade init` or the first `palisade serve` creates it",
            )?
            .verifier_key()
            .to_owned();
        Ok(Self {
            dir: ledger_dir(&data_dir),
            data_dir,
            vkey,
        })
    }
}

pub async fn run(cmd: AuditCommand) -> anyhow::Result<()> {
    match cmd {
        AuditCommand::Search {
            store,
            from,
            to,
            tenant,
            app,
            env,
            key,
            model,
            status,
            kind,
            request_id,
            limit,
            json,
        } => {
            let Local {
                data_dir,
                dir,
                vkey,
            } = Local::of(&store)?;
            let db = palisade_store::SqliteStore::open_in(&data_dir)?;
            let size = palisade_server::audit_index::catch_up(&db, &dir, &vkey).await?;
            let query = palisade_store::AuditQuery {
                from,
                to,
                kind,
                tenant,
                app,
                env,
                key_id: key,
                model,
                status,
                request_id,
                limit,
            };
            let seqs = palisade_store::Store::search_audit(&db, query).await?;
            let mut found = Vec::new();
            for seq in seqs {
                let entry = palisade_ledger::proof::read_entry(&dir, size, seq)?;
                found.push((seq, entry));
            }
            if json {
                let list: Vec<serde_json::Value> = found
                    .iter()
                    .map(|(seq, e)| json!({"seq": seq, "entry": serde_json::from_slice::<serde_json::Value>(e).unwrap_or_default()}))
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for (seq, e) in found {
                    println!("{seq} {}", String::from_utf8_lossy(&e));
                }
            }
            Ok(())
        }
        AuditCommand::Key { store } => {
            println!("{}", Local::of(&store)?.vkey);
            Ok(())
        }
        AuditCommand::Prove { seq, store, out } => {
            let Local { dir, vkey, .. } = Local::of(&store)?;
            let proof = palisade_ledger::proof::prove(&dir, &vkey, seq)?;
            match out {
                Some(path) => {
                    std::fs::write(&path, proof)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    println!("wrote {}", path.display());
                }
                None => print!("{proof}"),
            }
            Ok(())
        }
        AuditCommand::Tail {
            store,
            lines,
            follow,
        } => {
            let Local { dir, vkey, .. } = Local::of(&store)?;
            let size_now = || -> anyhow::Result<u64> {
                Ok(palisade_ledger::read_checkpoint(&dir, &vkey)?.map_or(0, |(head, _)| head.size))
            };
            let mut printed = size_now()?.saturating_sub(lines);
            loop {
                let size = size_now()?;
                for (seq, entry) in palisade_ledger::proof::read_entries(&dir, size, printed, size)?
                {
                    println!("{seq} {}", String::from_utf8_lossy(&entry));
                }
                printed = printed.max(size);
                if !follow {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
        }
        AuditCommand::Export {
            store,
            from,
            to,
            out,
        } => {
            if from >= to {
                bail!("--from must come before --to");
            }
            let Local { dir, vkey, .. } = Local::of(&store)?;
            let done = palisade_ledger::export::export(&dir, &vkey, &from, &to, &out)?;
            println!(
                "exported {} entries (of {}) with proofs to {}; check with: palisade audit check-export {} --key '{vkey}'",
                done.entries,
                done.size,
                out.display(),
                out.display()
            );
            Ok(())
        }
        AuditCommand::CheckExport { dir, key } => {
            let done = palisade_ledger::export::check(&dir, &key)?;
            println!(
                "ok: {} entries, each proved in the log of size {}",
                done.entries, done.size
            );
            Ok(())
        }
        AuditCommand::CheckProof { file, key } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let proven = palisade_ledger::proof::check(&text, &key)?;
            println!(
                "ok: entry {} is in {} (size {})",
                proven.index, proven.origin, proven.size
            );
            println!("{}", String::from_utf8_lossy(&proven.entry));
            Ok(())
        }
        AuditCommand::Verify {
            store,
            ledger,
            key,
            since,
            json,
        } => {
            let earlier = since
                .map(|p| std::fs::read(&p).with_context(|| format!("cannot read {}", p.display())))
                .transpose()?;
            let (dir, vkey) = match (ledger, key) {
                (Some(dir), Some(vkey)) => (dir, vkey),
                (ledger, key) => {
                    let data_dir = store.data_dir()?;
                    let vkey = match key {
                        Some(k) => k,
                        None => LedgerKey::load(&key_path(&data_dir))?
                            .verifier_key()
                            .to_owned(),
                    };
                    (ledger.unwrap_or_else(|| ledger_dir(&data_dir)), vkey)
                }
            };
            match palisade_ledger::verify_since(&dir, &vkey, earlier.as_deref()) {
                Ok(v) => {
                    if json {
                        println!(
                            "{}",
                            json!({"ok": true, "origin": v.head.origin, "size": v.head.size,
                                   "root": v.head.root.to_string(), "tiles_checked": v.tiles_checked})
                        );
                    } else {
                        println!(
                            "ok: {} entries, {} tiles, root {} signed by {}",
                            v.head.size, v.tiles_checked, v.head.root, v.head.origin
                        );
                    }
                    Ok(())
                }
                Err(e) => {
                    if json {
                        println!("{}", json!({"ok": false, "error": e.to_string()}));
                    }
                    bail!("ledger verification failed: {e}")
                }
            }
        }
    }
}
