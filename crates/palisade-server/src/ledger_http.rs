//! The ledger over HTTP, on the admin listener, in the C2SP tlog-tiles
//! layout: `/audit/checkpoint` and `/audit/tile/...`. Full tiles never
//! change and are served as immutable; the checkpoint and partial tiles are
//! not cached.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::auth::AdminPrincipal;
use crate::state::AppState;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const NO_CACHE: &str = "no-cache";

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

fn serve_file(path: std::path::PathBuf, cache: &'static str) -> Response {
    match std::fs::read(path) {
        Ok(data) => {
            let mut resp = data.into_response();
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
            resp
        }
        Err(_) => not_found(),
    }
}

/// The client's address, when the listener knows it.
pub struct Peer(Option<SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// Every read of the ledger through the admin listener is itself recorded:
/// who read what, from where, and the answer.
fn record_read(
    state: &AppState,
    who: Option<&AdminPrincipal>,
    peer: Option<SocketAddr>,
    path: &str,
    status: StatusCode,
) {
    state.audit().submit(
        "audit.read",
        serde_json::json!({
            "actor": who.map_or_else(|| "anonymous".to_owned(), AdminPrincipal::actor),
            "source": peer.map(|p| p.ip().to_string()),
            "path": path.chars().filter(|c| !c.is_control()).take(200).collect::<String>(),
            "status": status.as_u16(),
        }),
    );
}

type Who = Option<axum::Extension<AdminPrincipal>>;

pub async fn checkpoint(State(state): State<AppState>, Peer(peer): Peer, who: Who) -> Response {
    let path = state.audit().journal().dir().join("checkpoint");
    let mut resp = serve_file(path, NO_CACHE);
    record_read(
        &state,
        who.as_deref(),
        peer,
        "/audit/checkpoint",
        resp.status(),
    );
    if resp.status() == StatusCode::OK {
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    resp
}

pub async fn tile(
    State(state): State<AppState>,
    Peer(peer): Peer,
    who: Who,
    Path(rest): Path<String>,
) -> Response {
    let resp = match tile_path_kind(&rest) {
        None => not_found(),
        Some(partial) => {
            let file = state.audit().journal().dir().join("tile").join(&rest);
            serve_file(file, if partial { NO_CACHE } else { IMMUTABLE })
        }
    };
    record_read(
        &state,
        who.as_deref(),
        peer,
        &format!("/audit/tile/{rest}"),
        resp.status(),
    );
    resp
}

/// Checks `rest` (after `tile/`) against the tlog-tiles grammar:
/// `<L>|entries` `/` (`x<3 digits>/`)* `<3 digits>` [`.p/<W>`]. Returns
/// whether the tile is partial; `None` for anything else (including every
/// attempt at path traversal).
fn tile_path_kind(rest: &str) -> Option<bool> {
    let (level, rest) = rest.split_once('/')?;
    let level_ok = level == "entries"
        || (!level.is_empty() && level.len() <= 2 && level.bytes().all(|b| b.is_ascii_digit()));
    if !level_ok {
        return None;
    }
    let (index, width) = match rest.split_once(".p/") {
        Some((index, width)) => (index, Some(width)),
        None => (rest, None),
    };
    let groups: Vec<&str> = index.split('/').collect();
    let (last, prefix) = groups.split_last()?;
    let three_digits = |g: &str| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit());
    if !three_digits(last)
        || !prefix
            .iter()
            .all(|g| g.strip_prefix('x').is_some_and(three_digits))
    {
        return None;
    }
    match width {
        None => Some(false),
        Some(w) => {
            let n: u16 = w.parse().ok()?;
            (w.len() <= 3 && (1..256).contains(&n) && !w.starts_with('0')).then_some(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tile_path_kind;

    #[test]
    fn accepts_only_tile_paths() {
        assert_eq!(tile_path_kind("0/000"), Some(false));
        assert_eq!(tile_path_kind("1/x001/x234/067"), Some(false));
        assert_eq!(tile_path_kind("entries/005.p/17"), Some(true));
        for bad in [
            "",
            "0",
            "0/",
            "../../ledger.key",
            "0/../../x",
            "0/00",
            "0/0000",
            "abc/000",
            "0/x01/000",
            "0/000.p/0",
            "0/000.p/256",
            "0/000.p/017",
            "0/000/../../x",
            "entries/000.p/",
        ] {
            assert_eq!(tile_path_kind(bad), None, "{bad}");
        }
    }
}
