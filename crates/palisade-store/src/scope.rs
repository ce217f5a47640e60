//! What a key may do: models (globs), endpoints, source networks and the
//! largest completion it may ask for. Pure functions, no I/O.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Every model, every endpoint.
pub const ANY: &str = "*";

/// A key's scope. The default allows everything from anywhere, which is
/// what keys made before scopes existed get.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scope {
    /// Model names the key may ask for: exact names or globs (`*` any run
    /// of characters, `?` one character), e.g. `gpt-4o*`.
    pub models: Vec<String>,
    /// Endpoint labels (`chat_completions`, `embeddings`, ...) or `*`.
    pub endpoints: Vec<String>,
    /// Source networks the key may be used from; empty means any.
    pub networks: Vec<IpNet>,
    /// The most completion tokens one request may ask for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// The SHA-256 fingerprint (lowercase hex) of the client certificate
    /// the key must be used with, over mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// Requests per minute for this key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Requests in flight at once for this key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Tokens per minute for this key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Tokens per UTC day for this key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_tokens: Option<u64>,
    /// Tokens per UTC month for this key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_tokens: Option<u64>,
    /// Cost per UTC day for this key, in the models' price currency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_cost: Option<f64>,
    /// Cost per UTC month for this key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly_cost: Option<f64>,
}

impl Default for Scope {
    fn default() -> Self {
        Self {
            models: vec![ANY.to_owned()],
            endpoints: vec![ANY.to_owned()],
            networks: Vec::new(),
            max_tokens: None,
            client_cert: None,
            rpm: None,
            concurrency: None,
            tpm: None,
            daily_tokens: None,
            monthly_tokens: None,
            daily_cost: None,
            monthly_cost: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("model pattern {0:?} must be 1 to 128 printable characters without spaces")]
    BadModel(String),
    #[error("a key needs at least one model pattern and one endpoint")]
    Empty,
    #[error(
        "{0:?} is not a network (use CIDR such as 10.0.0.0/8 or 2001:db8::/32, or one address)"
    )]
    BadNetwork(String),
    #[error("max_tokens, rpm, tpm and concurrency must be at least 1")]
    BadMaxTokens,
    #[error("a cost budget must be a number above 0")]
    BadCost,
    #[error("a client certificate fingerprint is 64 lowercase hex characters (SHA-256)")]
    BadFingerprint,
}

impl Scope {
    /// Checks the patterns (endpoint names are checked by the caller, who
    /// knows the endpoints).
    pub fn validate(&self) -> Result<(), ScopeError> {
        if self.models.is_empty() || self.endpoints.is_empty() {
            return Err(ScopeError::Empty);
        }
        for m in &self.models {
            let ok = (1..=128).contains(&m.len())
                && m.chars().all(|c| !c.is_whitespace() && !c.is_control());
            if !ok {
                return Err(ScopeError::BadModel(m.clone()));
            }
        }
        if [self.max_tokens, self.rpm, self.concurrency, self.tpm].contains(&Some(0))
            || [self.daily_tokens, self.monthly_tokens].contains(&Some(0))
        {
            return Err(ScopeError::BadMaxTokens);
        }
        if [self.daily_cost, self.monthly_cost]
            .iter()
            .flatten()
            .any(|c| !c.is_finite() || *c <= 0.0)
        {
            return Err(ScopeError::BadCost);
        }
        if let Some(fp) = &self.client_cert
            && !is_fingerprint(fp)
        {
            return Err(ScopeError::BadFingerprint);
        }
        Ok(())
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.models.iter().any(|p| glob_match(p, model))
    }

    pub fn allows_endpoint(&self, label: &str) -> bool {
        self.endpoints.iter().any(|e| e == ANY || e == label)
    }

    pub fn allows_source(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.networks.is_empty() || self.networks.iter().any(|n| n.contains(&ip))
    }

    /// Whether some model pattern matches every model.
    pub fn any_model(&self) -> bool {
        self.models.iter().any(|p| p.chars().all(|c| c == '*'))
    }
}

/// A SHA-256 fingerprint as Palisade writes them: 64 lowercase hex digits.
pub fn is_fingerprint(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a single address (as /32 or
/// /128). Host bits must be zero, so that a typo such as `10.0.0.1/8` is
/// caught rather than silently widened.
pub fn parse_network(s: &str) -> Result<IpNet, ScopeError> {
    let bad = || ScopeError::BadNetwork(s.chars().take(64).collect());
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(canonical(ip)));
    }
    let net: IpNet = s.parse().map_err(|_| bad())?;
    if net.trunc() != net {
        return Err(bad());
    }
    Ok(net)
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, as a dual-stack listener
/// reports IPv4 peers) are compared as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// `*` matches any run of characters, `?` exactly one; everything else
/// itself. Iterative with one backtrack point, so linear in practice and
/// never exponential.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "gpt-4o", true),
            ("gpt-4o", "gpt-4o", true),
            ("gpt-4o", "gpt-4o-mini", false),
            ("gpt-4o*", "gpt-4o-mini", true),
            ("gpt-4o*", "gpt-4", false),
            ("*-mini", "gpt-4o-mini", true),
            ("claude-?-haiku", "claude-3-haiku", true),
            ("claude-?-haiku", "claude-35-haiku", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**", "x", true),
            ("", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob_match(p, t), want, "{p} vs {t}");
        }
        // No exponential blow-up on adversarial input.
        let text = "a".repeat(5000);
        assert!(!glob_match(&format!("{}b", "*a".repeat(50)), &text));
    }

    #[test]
    fn networks() {
        let s = Scope {
            networks: vec![
                parse_network("10.0.0.0/8").unwrap(),
                parse_network("2001:db8::/32").unwrap(),
                parse_network("192.0.2.7").unwrap(),
            ],
            ..Scope::default()
        };
        for (ip, want) in [
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("::ffff:10.9.9.9", true),
            ("2001:db8::1", true),
            ("2001:db9::1", false),
            ("192.0.2.7", true),
            ("192.0.2.8", false),
        ] {
            assert_eq!(s.allows_source(ip.parse().unwrap()), want, "{ip}");
        }
        assert!(Scope::default().allows_source("203.0.113.1".parse().unwrap()));
        for bad in ["10.0.0.1/8", "10.0.0.0/33", "banana", "", "10.0.0.0/"] {
            assert!(parse_network(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_and_defaults() {
        let d = Scope::default();
        assert!(d.validate().is_ok() && d.any_model() && d.allows_endpoint("embeddings"));
        let s = Scope {
            models: vec!["gpt 4".into()],
            ..Scope::default()
        };
        assert!(matches!(s.validate(), Err(ScopeError::BadModel(_))));
        let s = Scope {
            endpoints: vec![],
            ..Scope::default()
        };
        assert_eq!(s.validate(), Err(ScopeError::Empty));
        let s = Scope {
            endpoints: vec!["embeddings".into()],
            models: vec!["text-*".into()],
            ..Scope::default()
        };
        assert!(!s.any_model());
        assert!(s.allows_endpoint("embeddings") && !s.allows_endpoint("chat_completions"));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let s = Scope {
                daily_cost: Some(bad),
                ..Scope::default()
            };
            assert_eq!(s.validate(), Err(ScopeError::BadCost), "{bad}");
        }
        let s = Scope {
            monthly_cost: Some(12.5),
            ..Scope::default()
        };
        assert!(s.validate().is_ok());
        // Keys made before scopes existed have `{}` stored: everything.
        let old: Scope = serde_json::from_str("{}").unwrap();
        assert_eq!(old, Scope::default());
    }
}
