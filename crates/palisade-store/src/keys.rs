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
//! A scanner can match `pal_[a-z0-9]{1,16}_[0-9a-hjkmnp-tv-z]{12}_[0-9a-hjkmnp-tv-z]{34}`;
//! admin tokens are `paladm_[0-9a-hjkmnp-tv-z]{12}_[0-9a-hjkmnp-tv-z]{34}`.
//! Only SHA-256 of the whole key is stored; verification compares hashes in
//! constant time.

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::scope::{Scope, ScopeError};

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
    #[error("names (tenant, app, admin, label) must be 1 to 64 characters of a-z, 0-9, '-' or '_'")]
    BadName,
    #[error("key id must be 12 characters of lowercase base32")]
    BadId,
    #[error("not a Palisade API key")]
    Malformed,
    #[error("API key checksum does not match (mistyped or truncated key)")]
    Checksum,
    #[error("the system random number generator failed")]
    Random,
    #[error("invalid scope: {0}")]
    Scope(#[from] ScopeError),
    #[error("owner and ticket must be 1 to 200 characters without control characters")]
    BadText,
    #[error("labels: at most 32, names like tenant names, values 1 to 200 characters")]
    BadLabels,
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
        if !is_env(env) {
            return Err(KeyError::Malformed);
        }
        let id = check_id_and_tail(s, rest)?;
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

    /// Whether this is the key `record` holds now, in constant time.
    pub fn matches(&self, record: &KeyRecord) -> bool {
        bool::from(self.hash.ct_eq(&record.hash)) && self.id == record.id && self.env == record.env
    }

    /// Whether `record` accepts this key at `now`, and if not, why. The
    /// reasons are for the audit record; a caller is told only that the
    /// key is invalid.
    pub fn check(&self, record: &KeyRecord, now: i64) -> Result<Secret, Refusal> {
        if self.id != record.id || self.env != record.env {
            return Err(Refusal::WrongSecret);
        }
        let current = bool::from(self.hash.ct_eq(&record.hash));
        let previous = record
            .previous
            .as_ref()
            .is_some_and(|p| bool::from(self.hash.ct_eq(&p.hash)));
        let which = match (current, previous) {
            (true, _) => Secret::Current,
            (false, true) => match &record.previous {
                Some(p) if now < p.valid_until => Secret::Previous,
                _ => return Err(Refusal::RotatedOut),
            },
            (false, false) => return Err(Refusal::WrongSecret),
        };
        if record.revoked_at.is_some() {
            return Err(Refusal::Revoked);
        }
        if record.disabled_at.is_some() {
            return Err(Refusal::Disabled);
        }
        if record.expires_at.is_some_and(|t| now >= t) {
            return Err(Refusal::Expired);
        }
        Ok(which)
    }
}

/// Which of a key's secrets was presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    Current,
    /// The one replaced by a rotation, within its grace period.
    Previous,
}

/// Why a well-formed key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such id, or not its secret.
    WrongSecret,
    /// The secret a rotation replaced, after its grace period.
    RotatedOut,
    Revoked,
    Expired,
    /// Disabled for disuse.
    Disabled,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WrongSecret => "wrong_secret",
            Self::RotatedOut => "rotated_secret",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Disabled => "disabled",
        }
    }
}

/// What the caller supplies to create a key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewKey {
    pub tenant: String,
    pub app: String,
    pub env: String,
    pub scope: Scope,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub owner: Option<String>,
    /// The approval ticket (change request) the key was granted under.
    pub ticket: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Who created it (`admin:<name>`, `cli:<user>`).
    pub created_by: String,
}

impl NewKey {
    pub fn validate(&self) -> Result<(), KeyError> {
        if !is_env(&self.env) {
            return Err(KeyError::BadEnv);
        }
        if !is_name(&self.tenant) || !is_name(&self.app) {
            return Err(KeyError::BadName);
        }
        self.scope.validate()?;
        for text in [&self.owner, &self.ticket].into_iter().flatten() {
            if !is_text(text) {
                return Err(KeyError::BadText);
            }
        }
        if self.labels.len() > 32 || !self.labels.iter().all(|(k, v)| is_name(k) && is_text(v)) {
            return Err(KeyError::BadLabels);
        }
        Ok(())
    }
}

/// The secret a rotation replaced, accepted until `valid_until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    pub hash: [u8; 32],
    /// Unix seconds.
    pub valid_until: i64,
}

/// A stored key: everything but the secret. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub tenant: String,
    pub app: String,
    pub env: String,
    pub hash: [u8; 32],
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
    pub scope: Scope,
    pub expires_at: Option<i64>,
    pub owner: Option<String>,
    pub ticket: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub rotated_at: Option<i64>,
    pub previous: Option<PreviousSecret>,
    pub last_used_at: Option<i64>,
    pub disabled_at: Option<i64>,
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

    /// `active`, `revoked`, `disabled` or `expired` at `now`.
    pub fn status(&self, now: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.disabled_at.is_some() {
            "disabled"
        } else if self.expires_at.is_some_and(|t| now >= t) {
            "expired"
        } else {
            "active"
        }
    }
}

/// Makes a fresh key for `new`: its record and its plaintext.
pub fn generate(new: &NewKey, now: i64) -> Result<(KeyRecord, ApiKey), KeyError> {
    new.validate()?;
    let id = KeyId(random_base32(ID_LEN)?);
    let (hash, key) = fresh_secret(&id, &new.env)?;
    let record = KeyRecord {
        id,
        tenant: new.tenant.clone(),
        app: new.app.clone(),
        env: new.env.clone(),
        hash,
        created_at: now,
        created_by: new.created_by.clone(),
        revoked_at: None,
        scope: new.scope.clone(),
        expires_at: new.expires_at,
        owner: new.owner.clone(),
        ticket: new.ticket.clone(),
        labels: new.labels.clone(),
        rotated_at: None,
        previous: None,
        last_used_at: None,
        disabled_at: None,
    };
    Ok((record, key))
}

/// A new secret for key `id` in `env`: its hash and the whole key. Rotation
/// keeps the id, so audit records and scopes follow the key across it.
pub fn fresh_secret(id: &KeyId, env: &str) -> Result<([u8; 32], ApiKey), KeyError> {
    let secret = random_base32(SECRET_LEN)?;
    let body = format!("{PREFIX}_{env}_{id}_{secret}");
    let key = format!("{body}{}", checksum(&body));
    Ok((hash_key(&key), ApiKey(key)))
}

/// Admin tokens: `paladm_<id>_<secret><check>`, the same id, secret and
/// checksum rules as API keys under their own prefix, so that a proxy key
/// can never be mistaken for one (or the other way round).
pub const ADMIN_PREFIX: &str = "paladm";

/// A presented admin token that is well formed and whose checksum holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedAdminToken {
    id: KeyId,
    hash: [u8; 32],
}

impl PresentedAdminToken {
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let rest = s
            .strip_prefix(ADMIN_PREFIX)
            .and_then(|r| r.strip_prefix('_'))
            .ok_or(KeyError::Malformed)?;
        let id = check_id_and_tail(s, rest)?;
        Ok(Self {
            id,
            hash: hash_key(s),
        })
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    pub fn matches(&self, hash: &[u8; 32]) -> bool {
        bool::from(self.hash.ct_eq(hash))
    }
}

/// A new admin token: its id, hash and plaintext.
pub fn generate_admin_token() -> Result<(KeyId, [u8; 32], ApiKey), KeyError> {
    let id = KeyId(random_base32(ID_LEN)?);
    let secret = random_base32(SECRET_LEN)?;
    let body = format!("{ADMIN_PREFIX}_{id}_{secret}");
    let token = format!("{body}{}", checksum(&body));
    Ok((id, hash_key(&token), ApiKey(token)))
}

/// `rest` is `<id>_<secret><check>`, the tail of the whole token `s`.
fn check_id_and_tail(s: &str, rest: &str) -> Result<KeyId, KeyError> {
    let (id, tail) = rest.split_once('_').ok_or(KeyError::Malformed)?;
    if tail.len() != SECRET_LEN + CHECK_LEN || !tail.bytes().all(|b| ALPHABET.contains(&b)) {
        return Err(KeyError::Malformed);
    }
    let id = KeyId::parse(id).map_err(|_| KeyError::Malformed)?;
    let body_len = s.len() - CHECK_LEN;
    let expected = checksum(&s[..body_len]);
    if !bool::from(expected.as_bytes().ct_eq(&s.as_bytes()[body_len..])) {
        return Err(KeyError::Checksum);
    }
    Ok(id)
}

/// Free text kept with a key (owner, ticket, label values): 1 to 200
/// characters, no control characters.
pub fn is_text(s: &str) -> bool {
    (1..=200).contains(&s.chars().count()) && !s.chars().any(char::is_control)
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
            ..NewKey::default()
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

    #[test]
    fn check_names_why_a_key_is_refused() {
        let (mut record, key) = generate(&new_key(), 100).unwrap();
        let presented = PresentedKey::parse(key.expose()).unwrap();
        assert_eq!(presented.check(&record, 100), Ok(Secret::Current));

        // Rotation: the old secret works until the grace period ends.
        let (new_hash, fresh) = fresh_secret(&record.id, &record.env).unwrap();
        record.previous = Some(PreviousSecret {
            hash: record.hash,
            valid_until: 200,
        });
        record.hash = new_hash;
        let rotated = PresentedKey::parse(fresh.expose()).unwrap();
        assert_eq!(rotated.id(), presented.id());
        assert_eq!(rotated.check(&record, 150), Ok(Secret::Current));
        assert_eq!(presented.check(&record, 199), Ok(Secret::Previous));
        assert_eq!(presented.check(&record, 200), Err(Refusal::RotatedOut));
        assert_eq!(rotated.check(&record, 10_000), Ok(Secret::Current));

        let mut expired = record.clone();
        expired.expires_at = Some(300);
        assert_eq!(rotated.check(&expired, 299), Ok(Secret::Current));
        assert_eq!(rotated.check(&expired, 300), Err(Refusal::Expired));
        assert_eq!(expired.status(300), "expired");

        let mut disabled = record.clone();
        disabled.disabled_at = Some(1);
        assert_eq!(rotated.check(&disabled, 2), Err(Refusal::Disabled));

        let mut revoked = record.clone();
        revoked.revoked_at = Some(1);
        assert_eq!(rotated.check(&revoked, 2), Err(Refusal::Revoked));
        // A wrong secret is refused as such, whatever state the key is in.
        let (_, other) = generate(&new_key(), 1).unwrap();
        let other = PresentedKey::parse(other.expose()).unwrap();
        assert_eq!(other.check(&revoked, 2), Err(Refusal::WrongSecret));
    }

    #[test]
    fn admin_tokens_and_api_keys_are_never_confused() {
        let (id, hash, token) = generate_admin_token().unwrap();
        assert!(token.expose().starts_with("paladm_"));
        let presented = PresentedAdminToken::parse(token.expose()).unwrap();
        assert_eq!(presented.id(), &id);
        assert!(presented.matches(&hash));
        assert!(PresentedKey::parse(token.expose()).is_err());
        let (_, key) = generate(&new_key(), 1).unwrap();
        assert!(PresentedAdminToken::parse(key.expose()).is_err());
        let mut typo = token.expose().to_owned().into_bytes();
        let last = typo.len() - 1;
        typo[last] = if typo[last] == b'0' { b'1' } else { b'0' };
        assert_eq!(
            PresentedAdminToken::parse(std::str::from_utf8(&typo).unwrap()),
            Err(KeyError::Checksum)
        );
    }

    #[test]
    fn metadata_is_validated() {
        let mut n = new_key();
        n.owner = Some("team-search@example.com".into());
        n.ticket = Some("CHG-1234".into());
        n.labels.insert("cost-center".into(), "R&D 42".into());
        assert!(n.validate().is_ok());
        n.ticket = Some("line\nbreak".into());
        assert_eq!(n.validate(), Err(KeyError::BadText));
        let mut n = new_key();
        n.labels.insert("Bad Label".into(), "x".into());
        assert_eq!(n.validate(), Err(KeyError::BadLabels));
    }
}
