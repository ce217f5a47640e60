//! Palisade's data protection engine: finds PII, PHI and secrets in text,
//! and redacts, masks, tokenizes (and restores), blocks or only records
//! them. A pure library: no I/O, no clocks, linear-time matching only
//! (hand-written scanners, Aho-Corasick, and the `regex` crate, which never
//! backtracks).
//!
//! ```
//! use palisade_dlp::{Action, Detector, DetectorConfig, Policy, Session};
//!
//! let detector = Detector::new(&DetectorConfig::default()).unwrap();
//! let policy = Policy::new(Action::Tokenize);
//! let mut session = Session::new();
//! let sent = session.protect(&detector, &policy, "Mail jane@acme.io today");
//! assert_eq!(sent, "Mail [EMAIL_1] today");
//! let restorer = session.restorer();
//! assert_eq!(restorer.restore("Sent to [EMAIL_1]."), "Sent to jane@acme.io.");
//! ```

mod detector;
mod entity;
pub mod eval;
pub mod json;
mod names;
mod normalize;
mod policy;
mod protect;
mod scan;
mod secrets;

pub use detector::{
    CustomPattern, DEFAULT_THRESHOLD, DenyList, Detector, DetectorConfig, DlpError,
};
pub use entity::{Class, Entity, Finding};
pub use normalize::Normalized;
pub use policy::{PolicyInput, Protection, check_policy, class_defaults, protection};
pub use protect::{Action, Policy, Restorer, Session};
