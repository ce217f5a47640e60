//! Admin principals: who may use the admin API, and with which role.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::keys::{KeyError, KeyId, is_name};
use crate::scope::is_fingerprint;

/// What an admin principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manage tenants, keys, policies and other admins; read everything.
    Admin,
    /// Read only: keys and their reviews, audit search and entries, the
    /// ledger's tiles and checkpoints.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "auditor" => Some(Self::Auditor),
            _ => None,
        }
    }

    pub fn can_write(self) -> bool {
        self == Self::Admin
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored admin principal; the token itself is kept only as a hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminRecord {
    pub id: KeyId,
    pub name: String,
    pub role: Role,
    pub hash: [u8; 32],
    /// Unix seconds.
    pub created_at: i64,
    pub created_by: String,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    /// The SHA-256 fingerprint of a client certificate that authenticates
    /// as this principal over mutual TLS, without the token.
    pub cert: Option<String>,
}

/// What the caller supplies to create an admin principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAdmin {
    pub name: String,
    pub role: Role,
    pub created_by: String,
    pub cert: Option<String>,
}

impl NewAdmin {
    pub fn validate(&self) -> Result<(), KeyError> {
        if !is_name(&self.name) {
            return Err(KeyError::BadName);
        }
        if self.cert.as_deref().is_some_and(|c| !is_fingerprint(c)) {
            return Err(KeyError::Scope(crate::scope::ScopeError::BadFingerprint));
        }
        Ok(())
    }
}
