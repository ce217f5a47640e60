//! Secrets in configuration are references, never literal values:
//! `env:NAME` reads an environment variable, `file:PATH` reads a file.
//! A resolved [`Secret`] never prints its value.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl TryFrom<String> for SecretRef {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if let Some(name) = s.strip_prefix("env:") {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err("env: must be followed by a variable name".into());
            }
            return Ok(Self::Env(name.to_owned()));
        }
        if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err("file: must be followed by a path".into());
            }
            return Ok(Self::File(PathBuf::from(path)));
        }
        // The value is not echoed: it may be a pasted secret.
        Err(
            "must be a reference, `env:NAME` or `file:PATH`; literal secrets are not accepted"
                .into(),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret from {0} is empty")]
    Empty(String),
}

impl SecretRef {
    /// Resolves the reference. `env` looks up an environment variable, so
    /// that tests can supply their own.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, SecretError> {
        let value = match self {
            Self::Env(name) => env(name).ok_or_else(|| SecretError::EnvMissing(name.clone()))?,
            Self::File(path) => std::fs::read_to_string(path)
                .map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        };
        if value.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(Secret(value))
    }
}

/// A resolved secret. `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references_and_refuses_literals() {
        assert_eq!(
            SecretRef::try_from("env:OPENAI_KEY".to_owned()),
            Ok(SecretRef::Env("OPENAI_KEY".into()))
        );
        assert_eq!(
            SecretRef::try_from("file:/run/key".to_owned()),
            Ok(SecretRef::File("/run/key".into()))
        );
        let err = SecretRef::try_from("sk-live-abcdef".to_owned()).unwrap_err();
        assert!(!err.contains("sk-live"), "error echoes the literal: {err}");
        assert!(SecretRef::try_from("env:".to_owned()).is_err());
        assert!(SecretRef::try_from("env:A-B".to_owned()).is_err());
    }

    #[test]
    fn resolves_from_env_and_file_and_never_prints() {
        let env = |name: &str| (name == "K").then(|| "value-123".to_owned());
        let s = SecretRef::Env("K".into()).resolve(&env).unwrap();
        assert_eq!(s.expose(), "value-123");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert!(matches!(
            SecretRef::Env("MISSING".into()).resolve(&env),
            Err(SecretError::EnvMissing(_))
        ));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "from-file\n").unwrap();
        let s = SecretRef::File(path).resolve(&env).unwrap();
        assert_eq!(s.expose(), "from-file");
    }
}
