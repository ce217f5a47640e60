//! Request ids: a well-formed incoming `x-request-id` is kept, otherwise a
//! UUIDv7 is made. The id is in the request's extensions for every later
//! layer, on the response, and sent upstream.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Debug, Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only visible ASCII is ever stored.
        self.0.to_str().unwrap_or_default()
    }
}

fn well_formed(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

thread_local! {
    /// Per-thread keyed hash and counter: the random part of request ids
    /// without a getrandom(2) call per request. Request ids need to be
    /// unique, not secret.
    static ID_BITS: (std::hash::RandomState, std::cell::Cell<u64>) =
        (std::hash::RandomState::new(), std::cell::Cell::new(0));
}

/// A fresh UUIDv7: milliseconds since the epoch, then 74 random bits.
pub fn new_request_id() -> HeaderValue {
    use std::hash::BuildHasher;
    let (a, b) = ID_BITS.with(|(keys, counter)| {
        let n = counter.get();
        counter.set(n.wrapping_add(1));
        (keys.hash_one((n, 0u8)), keys.hash_one((n, 1u8)))
    });
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&a.to_le_bytes());
    random[8..].copy_from_slice(&b.to_le_bytes()[..2]);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let uuid = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid.hyphenated().encode_lower(&mut text);
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("invalid"))
}

pub async fn layer(mut req: Request, next: Next) -> Response {
    let id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if well_formed(v) => v.clone(),
        _ => new_request_id(),
    };
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_are_unique_uuid_v7() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let id = new_request_id();
            let parsed = uuid::Uuid::parse_str(id.to_str().unwrap()).unwrap();
            assert_eq!(parsed.get_version_num(), 7);
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn accepts_only_plain_ids() {
        assert!(well_formed(&HeaderValue::from_static("abc-123_x.y:z")));
        assert!(!well_formed(&HeaderValue::from_static("")));
        assert!(!well_formed(&HeaderValue::from_static("has space")));
        assert!(!well_formed(
            &HeaderValue::from_str(&"a".repeat(129)).unwrap()
        ));
    }
}
