//! The ledger's signing key, in the `golang.org/x/mod/sumdb/note` text
//! formats: the private key `PRIVATE+KEY+<name>+<keyid>+<base64(0x01||seed)>`
//! and the verifier key `<name>+<keyid>+<base64(0x01||pubkey)>`, where the
//! key id is the first four bytes of `SHA-256(name || "\n" || 0x01 || pubkey)`
//! (C2SP signed-note). The name is the log's origin.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use signed_note::{StandardSigner, StandardVerifier};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the ledger key {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the ledger key {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the ledger key {path} is malformed")]
    Malformed { path: std::path::PathBuf },
    #[error("origin `{0}` cannot name a note key (no spaces or '+', not empty)")]
    BadName(String),
    #[error("the system random number generator failed")]
    Random,
}

/// The ledger's Ed25519 signing key.
pub struct LedgerKey {
    name: String,
    skey: String,
    vkey: String,
}

impl std::fmt::Debug for LedgerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerKey")
            .field("verifier", &self.vkey)
            .finish_non_exhaustive()
    }
}

impl LedgerKey {
    /// A fresh key for a log named `name`.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(KeyError::BadName(name.to_owned()));
        }
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|_| KeyError::Random)?;
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let mut pubkey = vec![0x01];
        pubkey.extend_from_slice(signing.verifying_key().as_bytes());
        let id = signed_note::key_id(name, &pubkey);
        let mut private = vec![0x01];
        private.extend_from_slice(&seed);
        let skey = format!("PRIVATE+KEY+{name}+{id:08x}+{}", BASE64.encode(private));
        let vkey = signed_note::new_ed25519_verifier_key(name, &signing.verifying_key());
        Ok(Self {
            name: name.to_owned(),
            skey,
            vkey,
        })
    }

    /// Reads `path`, or creates it (mode 0600) with a fresh key for `name`.
    pub fn load_or_create(path: &Path, name: &str) -> Result<Self, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(text.trim()).ok_or_else(|| KeyError::Malformed {
                path: path.to_owned(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate(name)?;
                key.save(path)?;
                Ok(key)
            }
            Err(source) => Err(KeyError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Reads an existing key.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(text.trim()).ok_or_else(|| KeyError::Malformed {
            path: path.to_owned(),
        })
    }

    fn parse(skey: &str) -> Option<Self> {
        // The note library checks the format and that the id matches.
        StandardSigner::new(skey).ok()?;
        let mut parts = skey.splitn(5, '+');
        let (_, _, name, _, key64) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        let private = BASE64.decode(key64).ok()?;
        let seed: [u8; 32] = private.get(1..)?.try_into().ok()?;
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        Some(Self {
            name: name.to_owned(),
            skey: skey.to_owned(),
            vkey: signed_note::new_ed25519_verifier_key(name, &signing.verifying_key()),
        })
    }

    fn save(&self, path: &Path) -> Result<(), KeyError> {
        let fail = |source| KeyError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(fail)?;
        file.write_all(self.skey.as_bytes()).map_err(fail)?;
        file.write_all(b"\n").map_err(fail)?;
        file.sync_all().map_err(fail)
    }

    /// The key's name: the log's origin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier key, for auditors: `name+keyid+base64(0x01||pubkey)`.
    pub fn verifier_key(&self) -> &str {
        &self.vkey
    }

    pub(crate) fn signer(&self) -> Option<StandardSigner> {
        StandardSigner::new(&self.skey).ok()
    }

    pub fn verifier(&self) -> Option<StandardVerifier> {
        StandardVerifier::new(&self.vkey).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_reload_and_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.key");
        let a = LedgerKey::load_or_create(&path, "example.com/palisade/node-1").unwrap();
        let b = LedgerKey::load_or_create(&path, "ignored").unwrap();
        assert_eq!(a.verifier_key(), b.verifier_key());
        assert_eq!(b.name(), "example.com/palisade/node-1");
        assert!(a.verifier_key().starts_with("example.com/palisade/node-1+"));
        assert!(a.signer().is_some() && a.verifier().is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // The private key never appears in Debug.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!format!("{a:?}").contains(text.trim()));
    }

    #[test]
    fn malformed_keys_and_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.key");
        std::fs::write(&path, "PRIVATE+KEY+x+00000000+AAAA\n").unwrap();
        assert!(matches!(
            LedgerKey::load(&path),
            Err(KeyError::Malformed { .. })
        ));
        assert!(matches!(
            LedgerKey::generate("has space"),
            Err(KeyError::BadName(_))
        ));
    }
}
