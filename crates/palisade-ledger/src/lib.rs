//! Palisade's audit ledger, in the open transparency-log formats so that
//! tools nobody here wrote can verify it:
//!
//! - entries are canonical JSON (RFC 8785) — [`canonical`];
//! - they are hashed as RFC 6962 leaves (`SHA-256(0x00 || entry)`, interior
//!   nodes `SHA-256(0x01 || left || right)`), using the `tlog_tiles` port of
//!   Go's `sumdb/tlog`;
//! - stored in the C2SP tlog-tiles layout — [`layout`];
//! - committed by C2SP tlog-checkpoints in C2SP signed notes with Ed25519
//!   keys in the `sumdb/note` formats — [`key`], [`log`];
//! - and checked from first principles by [`verify`].
//!
//! This crate does file I/O only; it knows nothing of HTTP or SQL.

pub mod canonical;
pub mod export;
pub mod journal;
pub mod key;
pub mod layout;
pub mod log;
pub mod proof;
pub mod time;
pub mod verify;
pub mod wal;

pub use journal::{Durability, Journal, JournalConfig, JournalError, OpenError, Recovery};
pub use key::{KeyError, LedgerKey};
pub use log::{Ledger, LedgerError, TreeHead, read_checkpoint};
pub use verify::{Verified, VerifyError, verify, verify_since};

#[cfg(test)]
mod tests;
