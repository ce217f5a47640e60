//! Gateway API keys.
//!
//! Format: `pal_<env>_<id>_<secret><check>`
//!
//! - `env`: the environment the key is bound to, `[a-z0-9]{1,16}`;
//! - `id`: 12 characters of lowercase Crockford base32 (60 random bits), the
//!   lookup handle, safe to log;
//! - `secret`: 26 characters (130 random bits);
//! - `check`: 8 characters, the first 40 bits of SHA-256 over everything
//!   before it, so a mistyped key is refused before any lookup and a secret
//!   scanner can tell a real key from look-alike text.
//!
//! A scanner can match `pal_[a-z0-9]{1,16}_[0-9a-hjkmnp-tv-z]{12}_[0-9a-hjkmnp-tv-z]{34}`.
//! Only SHA-256 of the whole key is stored; verification compares hashes in
//! constant time.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const PREFIX: &str = "pal";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 26;
const CHECK_LEN: usize = 8;
/// Crockford's base32 alphabet, lowercase (no i, l, o, u).
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("environment must be 1 to 16 characters of a-z and 0-9")]
    BadEnv,
    #[error("tenant and app must be 1 to 64 characters of a-z, 0-9, '-' or '_'")]
    BadName,
    #[error("key id must be 12 characters of lowercase base32")]
    BadId,
    #[error("not a Palisade API key")]
    Malformed,
    #[error("API key checksum does not match (mistyped or truncated key)")]
    Checksum,
    #[error("the system random number generator failed")]
    Random,
}

/// A key's public handle.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        if s.len() == ID_LEN && s.bytes().all(|b| ALPHABET.contains(&b)) {
            Ok(Self(s.to_owned()))
        } else {
            Err(KeyError::BadId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A plaintext key. Shown once at creation; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

impl ApiKey {
    /// The plaintext, for the one moment it is handed to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A presented key that is well formed and whose checksum holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedKey {
    id: KeyId,
    env: String,
    hash: [u8; 32],
}

impl PresentedKey {
    /// Checks the format and checksum; never touches storage.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let rest = s
            .strip_prefix(PREFIX)
            .and_then(|r| r.strip_prefix('_'))
            .ok_or(KeyError::Malformed)?;
        let (env, rest) = rest.split_once('_').ok_or(KeyError::Malformed)?;
        let (id, tail) = rest.split_once('_').ok_or(KeyError::Malformed)?;
        if !is_env(env) || tail.len() != SECRET_LEN + CHECK_LEN {
            return Err(KeyError::Malformed);
        }
        let id = KeyId::parse(id).map_err(|_| KeyError::Malformed)?;
        if !tail.bytes().all(|b| ALPHABET.contains(&b)) {
            return Err(KeyError::Malformed);
        }
        let body_len = s.len() - CHECK_LEN;
        let expected = checksum(&s[..body_len]);
        if !bool::from(expected.as_bytes().ct_eq(&s.as_bytes()[body_len..])) {
            return Err(KeyError::Checksum);
        }
        Ok(Self {
            id,
            env: env.to_owned(),
            hash: hash_key(s),
        })
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    pub fn env(&self) -> &str {
        &self.env
    }

    /// Whether this is the key `record` was created for, in constant time.
    pub fn matches(&self, record: &KeyRecord) -> bool {
        bool::from(self.hash.ct_eq(&record.hash)) && self.id == record.id && self.env == record.env
    }
}

/// What the caller supplies to create a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub tenant: String,
    pub app: String,
    pub env: String,
}

impl NewKey {
    pub fn validate(&self) -> Result<(), KeyError> {
        if !is_env(&self.env) {
            return Err(KeyError::BadEnv);
        }
        if !is_name(&self.tenant) || !is_name(&self.app) {
            return Err(KeyError::BadName);
        }
        Ok(())
    }
}

/// A stored key: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyRecord {
    pub id: KeyId,
    pub tenant: String,
    pub app: String,
    pub env: String,
    #[serde(skip)]
    pub hash: [u8; 32],
    /// Unix seconds.
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl KeyRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// Makes a fresh key for `new`: its record and its plaintext.
pub fn generate(new: &NewKey, now: i64) -> Result<(KeyRecord, ApiKey), KeyError> {
    new.validate()?;
    let id = random_base32(ID_LEN)?;
    let secret = random_base32(SECRET_LEN)?;
    let body = format!("{PREFIX}_{}_{id}_{secret}", new.env);
    let key = format!("{body}{}", checksum(&body));
    let record = KeyRecord {
        id: KeyId(id),
        tenant: new.tenant.clone(),
        app: new.app.clone(),
        env: new.env.clone(),
        hash: hash_key(&key),
        created_at: now,
        revoked_at: None,
    };
    Ok((record, ApiKey(key)))
}

pub fn is_env(s: &str) -> bool {
    (1..=16).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

pub fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn checksum(body: &str) -> String {
    let digest = Sha256::digest(body.as_bytes());
    // 40 bits → 8 base32 characters.
    let mut bits: u64 = 0;
    for b in &digest[..5] {
        bits = (bits << 8) | u64::from(*b);
    }
    (0..CHECK_LEN)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        .collect()
}

fn random_base32(len: usize) -> Result<String, KeyError> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).map_err(|_| KeyError::Random)?;
    // Each byte keeps 5 uniform bits.
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_key() -> NewKey {
        NewKey {
            tenant: "acme".into(),
            app: "chatbot".into(),
            env: "prod".into(),
        }
    }

    #[test]
    fn generated_keys_parse_and_match_their_record() {
        let (record, key) = generate(&new_key(), 1).unwrap();
        let presented = PresentedKey::parse(key.expose()).unwrap();
        assert_eq!(presented.id(), &record.id);
        assert_eq!(presented.env(), "prod");
        assert!(presented.matches(&record));
        assert!(key.expose().starts_with("pal_prod_"));
        assert_eq!(key.expose().len(), "pal_prod_".len() + 12 + 1 + 34);
    }

    #[test]
    fn keys_are_unique_and_unrelated() {
        let (r1, k1) = generate(&new_key(), 1).unwrap();
        let (r2, k2) = generate(&new_key(), 1).unwrap();
        assert_ne!(r1.id, r2.id);
        assert_ne!(k1, k2);
        assert!(!PresentedKey::parse(k1.expose()).unwrap().matches(&r2));
    }

    #[test]
    fn every_single_character_typo_is_caught_before_lookup() {
        let (_, key) = generate(&new_key(), 1).unwrap();
        let s = key.expose();
        let start = s.len() - (SECRET_LEN + CHECK_LEN);
        for i in start..s.len() {
            for &c in ALPHABET {
                if c == s.as_bytes()[i] {
                    continue;
                }
                let mut bytes = s.as_bytes().to_vec();
                bytes[i] = c;
                let typo = String::from_utf8(bytes).unwrap();
                assert!(PresentedKey::parse(&typo).is_err(), "typo at {i} accepted");
            }
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        let (_, key) = generate(&new_key(), 1).unwrap();
        let s = key.expose();
        for bad in [
            "",
            "sk-abc",
            "pal_",
            "pal_prod",
            &s[..s.len() - 1],
            &format!("{s}x"),
            &s.replace("pal_", "pak_"),
            &s.replace("_prod_", "_PROD_"),
            &s.to_uppercase(),
        ] {
            assert!(PresentedKey::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_valid_key_for_another_record_does_not_match() {
        let (mut record, key) = generate(&new_key(), 1).unwrap();
        let presented = PresentedKey::parse(key.expose()).unwrap();
        record.hash[0] ^= 1;
        assert!(!presented.matches(&record));
    }

    #[test]
    fn validates_names() {
        let mut n = new_key();
        n.env = "Prod".into();
        assert_eq!(generate(&n, 0).unwrap_err(), KeyError::BadEnv);
        let mut n = new_key();
        n.tenant = "a b".into();
        assert_eq!(generate(&n, 0).unwrap_err(), KeyError::BadName);
    }

    #[test]
    fn debug_never_prints_the_key() {
        let (_, key) = generate(&new_key(), 1).unwrap();
        assert!(!format!("{key:?}").contains(key.expose()));
    }
}
