//! Credentials: tokens with a known prefix (one Aho-Corasick pass finds
//! every prefix), JWTs, PEM private keys, and generic high-entropy values
//! assigned to words like `password`, `secret` or `token`.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::entity::{Entity, Finding};

/// A token format: its prefix, the characters its body may hold and the
/// body's length range.
struct Format {
    prefix: &'static str,
    entity: Entity,
    body: fn(u8) -> bool,
    min: usize,
    max: usize,
    score: f32,
}

fn upper_alnum(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit()
}

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn url_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

const FORMATS: &[Format] = &[
    // AWS access key ids (long-term AKIA, temporary ASIA, and the others).
    Format {
        prefix: "AKIA",
        entity: Entity::AwsAccessKey,
        body: upper_alnum,
        min: 16,
        max: 16,
        score: 0.95,
    },
    Format {
        prefix: "ASIA",
        entity: Entity::AwsAccessKey,
        body: upper_alnum,
        min: 16,
        max: 16,
        score: 0.95,
    },
    Format {
        prefix: "AIDA",
        entity: Entity::AwsAccessKey,
        body: upper_alnum,
        min: 16,
        max: 16,
        score: 0.8,
    },
    Format {
        prefix: "AROA",
        entity: Entity::AwsAccessKey,
        body: upper_alnum,
        min: 16,
        max: 16,
        score: 0.8,
    },
    Format {
        prefix: "AIza",
        entity: Entity::GoogleApiKey,
        body: url_safe,
        min: 35,
        max: 35,
        score: 0.95,
    },
    Format {
        prefix: "ghp_",
        entity: Entity::GithubToken,
        body: alnum,
        min: 36,
        max: 36,
        score: 0.99,
    },
    Format {
        prefix: "gho_",
        entity: Entity::GithubToken,
        body: alnum,
        min: 36,
        max: 36,
        score: 0.99,
    },
    Format {
        prefix: "ghu_",
        entity: Entity::GithubToken,
        body: alnum,
        min: 36,
        max: 36,
        score: 0.99,
    },
    Format {
        prefix: "ghs_",
        entity: Entity::GithubToken,
        body: alnum,
        min: 36,
        max: 36,
        score: 0.99,
    },
    Format {
        prefix: "ghr_",
        entity: Entity::GithubToken,
        body: alnum,
        min: 36,
        max: 36,
        score: 0.99,
    },
    Format {
        prefix: "github_pat_",
        entity: Entity::GithubToken,
        body: word,
        min: 60,
        max: 100,
        score: 0.99,
    },
    Format {
        prefix: "glpat-",
        entity: Entity::GitlabToken,
        body: url_safe,
        min: 20,
        max: 64,
        score: 0.99,
    },
    Format {
        prefix: "gldt-",
        entity: Entity::GitlabToken,
        body: url_safe,
        min: 20,
        max: 64,
        score: 0.95,
    },
    Format {
        prefix: "glrt-",
        entity: Entity::GitlabToken,
        body: url_safe,
        min: 20,
        max: 64,
        score: 0.95,
    },
    Format {
        prefix: "xoxb-",
        entity: Entity::SlackToken,
        body: url_safe,
        min: 20,
        max: 200,
        score: 0.99,
    },
    Format {
        prefix: "xoxp-",
        entity: Entity::SlackToken,
        body: url_safe,
        min: 20,
        max: 200,
        score: 0.99,
    },
    Format {
        prefix: "xoxa-",
        entity: Entity::SlackToken,
        body: url_safe,
        min: 20,
        max: 200,
        score: 0.99,
    },
    Format {
        prefix: "xoxr-",
        entity: Entity::SlackToken,
        body: url_safe,
        min: 20,
        max: 200,
        score: 0.99,
    },
    Format {
        prefix: "xoxs-",
        entity: Entity::SlackToken,
        body: url_safe,
        min: 20,
        max: 200,
        score: 0.99,
    },
    Format {
        prefix: "xapp-",
        entity: Entity::SlackToken,
        body: url_safe,
        min: 20,
        max: 200,
        score: 0.99,
    },
    Format {
        prefix: "sk_live_",
        entity: Entity::StripeKey,
        body: alnum,
        min: 20,
        max: 247,
        score: 0.99,
    },
    Format {
        prefix: "sk_test_",
        entity: Entity::StripeKey,
        body: alnum,
        min: 20,
        max: 247,
        score: 0.95,
    },
    Format {
        prefix: "rk_live_",
        entity: Entity::StripeKey,
        body: alnum,
        min: 20,
        max: 247,
        score: 0.99,
    },
    Format {
        prefix: "rk_test_",
        entity: Entity::StripeKey,
        body: alnum,
        min: 20,
        max: 247,
        score: 0.95,
    },
    Format {
        prefix: "whsec_",
        entity: Entity::StripeKey,
        body: alnum,
        min: 24,
        max: 64,
        score: 0.95,
    },
    Format {
        prefix: "sk-ant-",
        entity: Entity::AnthropicKey,
        body: url_safe,
        min: 40,
        max: 200,
        score: 0.99,
    },
    Format {
        prefix: "sk-proj-",
        entity: Entity::OpenaiKey,
        body: url_safe,
        min: 40,
        max: 300,
        score: 0.99,
    },
    Format {
        prefix: "sk-svcacct-",
        entity: Entity::OpenaiKey,
        body: url_safe,
        min: 40,
        max: 300,
        score: 0.99,
    },
    Format {
        prefix: "sk-admin-",
        entity: Entity::OpenaiKey,
        body: url_safe,
        min: 40,
        max: 300,
        score: 0.99,
    },
    Format {
        prefix: "sk-",
        entity: Entity::OpenaiKey,
        body: alnum,
        min: 32,
        max: 64,
        score: 0.9,
    },
];

/// Words after which a value is a credential (`password: hunter2!`).
pub const KEYWORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "api-key",
    "access_key",
    "access-key",
    "secret_key",
    "private_key",
    "client_secret",
    "auth_token",
    "credential",
    "credentials",
    "bearer",
];

const PEM_BEGIN: &str = "-----BEGIN ";

pub struct Secrets {
    prefixes: AhoCorasick,
}

impl Secrets {
    pub fn new() -> Result<Self, aho_corasick::BuildError> {
        let mut literals: Vec<&str> = FORMATS.iter().map(|f| f.prefix).collect();
        literals.push("eyJ");
        literals.push(PEM_BEGIN);
        let prefixes = AhoCorasickBuilder::new()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&literals)?;
        Ok(Self { prefixes })
    }

    /// Prefixed tokens, JWTs and PEM blocks; `keywords` are the byte
    /// ranges where a word of [`KEYWORDS`] occurs (found by the
    /// detector's one pass over its words).
    pub fn scan(&self, text: &str, keywords: &[(usize, usize)], out: &mut Vec<Finding>) {
        let s = text.as_bytes();
        let jwt = FORMATS.len();
        let pem = FORMATS.len() + 1;
        // Where the last token found ended: a PEM block's body holds more
        // `BEGIN`s and prefixes that are not tokens of their own.
        let mut covered = 0;
        for m in self.prefixes.find_iter(text) {
            let (start, id) = (m.start(), m.pattern().as_usize());
            if start < covered || (start > 0 && url_safe(s[start - 1]) && id != pem) {
                continue;
            }
            let found = if id == jwt {
                jwt_at(s, start)
            } else if id == pem {
                pem_at(text, start)
            } else {
                let f = &FORMATS[id];
                let body_start = m.end();
                let mut end = body_start;
                while end < s.len() && (f.body)(s[end]) && end - body_start <= f.max {
                    end += 1;
                }
                let len = end - body_start;
                let boundary = end >= s.len() || !(f.body)(s[end]);
                (boundary && (f.min..=f.max).contains(&len))
                    .then(|| Finding::new(f.entity, start, end, f.score))
            };
            if let Some(f) = found {
                covered = f.end;
                out.push(f);
            }
        }
        assigned(text, keywords, out);
    }
}

/// `password = "..."`, `"api_key": "..."`, `token: ...`, `Bearer ...`.
fn assigned(text: &str, keywords: &[(usize, usize)], out: &mut Vec<Finding>) {
    let s = text.as_bytes();
    // Where the previous key's name or value ended: `SECRET_ACCESS_KEY`
    // holds two keywords but names one value.
    let mut consumed = 0;
    for &(m_start, m_end) in keywords {
        if m_start < consumed || (m_start > 0 && s[m_start - 1].is_ascii_alphabetic()) {
            continue;
        }
        let keyword = &text[m_start..m_end];
        let bearer = keyword.eq_ignore_ascii_case("bearer");
        // The rest of the key's name (`password_hash`, `token_url`),
        // then quotes, spaces and one assignment sign.
        let mut i = m_end;
        while i < s.len() && (s[i].is_ascii_alphanumeric() || s[i] == b'_') && i - m_end < 24 {
            i += 1;
        }
        consumed = i;
        let mut assigned = bearer;
        while i < s.len() && i - m_end < 32 {
            match s[i] {
                b'"' | b'\'' | b' ' | b'\t' => i += 1,
                b':' | b'=' if !assigned => {
                    assigned = true;
                    i += 1;
                }
                _ => break,
            }
        }
        if !assigned {
            // `... password is hunter2`
            let rest = &text[i.min(text.len())..];
            if let Some(after) = rest.strip_prefix("is ") {
                i = text.len() - after.len();
            } else {
                continue;
            }
        }
        let start = i;
        // Values longer than 512 bytes are not taken for secrets; looking
        // no further keeps many keywords from costing the square.
        while i < s.len()
            && i - start <= 512
            && !matches!(
                s[i],
                b' ' | b'\t'
                    | b'\n'
                    | b'\r'
                    | b'"'
                    | b'\''
                    | b'`'
                    | b','
                    | b';'
                    | b'}'
                    | b')'
                    | b'<'
                    | b'>'
            )
        {
            i += 1;
        }
        // A full stop ends a sentence, not a password.
        let mut end = i;
        while end > start && s[end - 1] == b'.' {
            end -= 1;
        }
        let value = &s[start..end];
        if value.len() < 6 || value.len() > 512 || looks_like_placeholder(value) {
            continue;
        }
        let entropy = shannon(value);
        let classes = [
            value.iter().any(u8::is_ascii_lowercase),
            value.iter().any(u8::is_ascii_uppercase),
            value.iter().any(u8::is_ascii_digit),
            value.iter().any(|b| !b.is_ascii_alphanumeric()),
        ]
        .iter()
        .filter(|c| **c)
        .count();
        let score = if value.len() >= 16 && entropy >= 3.5 {
            0.9
        } else if value.len() >= 8 && classes >= 3 {
            0.8
        } else if !bearer && classes >= 2 {
            0.6
        } else {
            0.3
        };
        consumed = end;
        out.push(Finding::new(Entity::GenericSecret, start, end, score));
    }
}

/// Values that are obviously not the secret itself: references,
/// templates, masks.
fn looks_like_placeholder(v: &[u8]) -> bool {
    v.starts_with(b"${")
        || v.starts_with(b"{{")
        || v.starts_with(b"<")
        || v.starts_with(b"env:")
        || v.starts_with(b"file:")
        || v.starts_with(b"[")
        || v.iter()
            .all(|&b| b == b'*' || b == b'x' || b == b'X' || b == b'.')
}

/// Shannon entropy in bits per byte.
fn shannon(v: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in v {
        counts[usize::from(b)] += 1;
    }
    let n = v.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

fn b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// `eyJ<header>.<payload>.<signature>`, each part base64url.
fn jwt_at(s: &[u8], start: usize) -> Option<Finding> {
    let mut i = start;
    let mut parts = 0;
    loop {
        let part = i;
        while i < s.len() && b64url(s[i]) {
            i += 1;
        }
        if i - part < 10 {
            return None;
        }
        parts += 1;
        if parts == 3 || s.get(i) != Some(&b'.') {
            break;
        }
        i += 1;
    }
    // A full stop after it ends the sentence, unless more follows.
    let more =
        i < s.len() && (b64url(s[i]) || (s[i] == b'.' && s.get(i + 1).is_some_and(|&b| b64url(b))));
    (parts == 3 && !more).then(|| Finding::new(Entity::Jwt, start, i, 0.95))
}

/// A PEM private key block, through its END line (or to where the text
/// ends, when it was cut).
fn pem_at(text: &str, start: usize) -> Option<Finding> {
    // The header line is short; looking further would make many `BEGIN`s
    // cost the square of the text.
    let s = text.as_bytes();
    let window = &s[start..s.len().min(start + 80)];
    let line_end = memchr::memchr(b'\n', window).map_or(start + window.len(), |n| start + n);
    if !text.is_char_boundary(line_end) {
        return None;
    }
    let header = &text[start..line_end];
    if !header.contains("PRIVATE KEY-----") {
        return None;
    }
    let rest = &text[line_end..];
    let end = match rest.find("-----END ") {
        Some(at) => {
            let tail = &rest[at..];
            let close = tail["-----END ".len()..]
                .find("-----")
                .map_or(tail.len(), |n| "-----END ".len() + n + 5);
            line_end + at + close
        }
        None => text.len(),
    };
    Some(Finding::new(Entity::PrivateKey, start, end, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<(Entity, String)> {
        let mut out = Vec::new();
        let words = aho_corasick::AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(KEYWORDS)
            .unwrap();
        let keywords: Vec<(usize, usize)> = words
            .find_iter(text)
            .map(|m| (m.start(), m.end()))
            .collect();
        Secrets::new().unwrap().scan(text, &keywords, &mut out);
        out.iter()
            .filter(|f| f.score >= 0.5)
            .map(|f| (f.entity, text[f.start..f.end].to_owned()))
            .collect()
    }

    #[test]
    fn prefixed_tokens() {
        let cases = [
            (Entity::AwsAccessKey, "AKIAIOSFODNN7EXAMPLE".to_owned()),
            (Entity::GithubToken, format!("ghp_{}", "a1B2".repeat(9))),
            (Entity::GitlabToken, "glpat-xxxxXXXX1234yyyyZZZZ".to_owned()),
            (
                Entity::SlackToken,
                "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx".to_owned(),
            ),
            (
                Entity::StripeKey,
                format!("sk_live_{}", "4eC39HqLyjWDarjtT1zdp7dc"),
            ),
            (Entity::OpenaiKey, format!("sk-proj-{}", "Ab3_".repeat(12))),
            (Entity::OpenaiKey, format!("sk-{}", "T3BlbkFJ".repeat(6))),
            (
                Entity::AnthropicKey,
                format!("sk-ant-api03-{}", "xY9-".repeat(20)),
            ),
            (
                Entity::GoogleApiKey,
                format!("AIza{}", "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"),
            ),
        ];
        for (entity, token) in cases {
            assert_eq!(
                found(&format!("use `{token}` here")),
                [(entity, token.clone())],
                "{token}"
            );
        }
        // Inside a longer identifier, or too short: not a token.
        assert_eq!(found("xAKIAIOSFODNN7EXAMPLE"), []);
        assert_eq!(found("ghp_short"), []);
        assert_eq!(found("sk-learn is a library"), []);
    }

    #[test]
    fn jwts_and_pem_blocks() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(
            found(&format!("Authorization: {jwt}\n")),
            [(Entity::Jwt, jwt.to_owned())]
        );
        let pem =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY-----";
        assert_eq!(
            found(&format!("key:\n{pem}\nthanks")),
            [(Entity::PrivateKey, pem.to_owned())]
        );
        assert_eq!(
            found("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"),
            []
        );
        let cut = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg";
        assert_eq!(found(cut), [(Entity::PrivateKey, cut.to_owned())]);
    }

    #[test]
    fn assigned_secrets() {
        assert_eq!(
            found(r#"{"password": "Tr0ub4dor&3", "user": "bob"}"#),
            [(Entity::GenericSecret, "Tr0ub4dor&3".to_owned())]
        );
        assert_eq!(
            found("export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            [(
                Entity::GenericSecret,
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".to_owned()
            )]
        );
        assert_eq!(
            found("my db password is hunter2pass."),
            [(Entity::GenericSecret, "hunter2pass".to_owned())]
        );
        for no in [
            "password: ${DB_PASSWORD}",
            "token: <redacted>",
            "the password policy requires",
            "api_key = env:OPENAI_KEY",
            "token=********",
        ] {
            assert_eq!(found(no), [], "{no}");
        }
    }
}
