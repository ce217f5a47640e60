//! Bringing a response back from the provider.
//!
//! - Streams ([`sse_body`]): the upstream body is cut into whole SSE events
//!   and forwarded event by event as they arrive; only a partial event is
//!   ever held. Usage is read on the way. When the gateway (not the client)
//!   asked for `stream_options.include_usage`, the extra usage event and the
//!   `"usage":null` members it causes are removed, so the client sees what
//!   it asked for. A failure mid-stream (broken connection, idle or total
//!   timeout, oversized event) ends the stream with an error event in the
//!   caller's dialect, never a silent cut. Dropping the body (the client went
//!   away) drops the upstream connection, which cancels the request there.
//! - Whole responses ([`read_whole`]): read completely, within the
//!   provider's timeouts and a size bound, so the caller gets either the
//!   full response or a clean error.
//!
//! Either way a [`Completion`] guard records the outcome exactly once, when
//! the exchange ends, however it ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use palisade_dialect::sse::{Event, EventSplitter};
use palisade_dialect::usage::{self, EventRole, StreamUsage, Usage};
use palisade_dialect::{Dialect, Endpoint};
use tokio::time::timeout_at;

use crate::error::ApiError;
use crate::metrics::{EndpointLabels, Metrics, TokenLabels, UpstreamErrorLabels};
use crate::upstream::{TimeoutPhase, UpstreamError, UpstreamErrorKind};

/// Upper bound on a whole (non-streamed) upstream response.
pub const MAX_WHOLE_RESPONSE: usize = 64 * 1024 * 1024;

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    ClientDisconnected,
    UpstreamFailed(&'static str),
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::ClientDisconnected => "client_disconnected",
            Self::UpstreamFailed(_) => "upstream_failed",
        }
    }
}

/// Who asked for what, carried to the record of the exchange's end.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub request_id: String,
    pub key_id: String,
    pub peer: Option<std::net::SocketAddr>,
    pub endpoint: Endpoint,
    pub model: String,
    pub provider: Arc<str>,
    pub status: u16,
    pub started: Instant,
}

/// Records the end of one proxied exchange when dropped: metrics and the
/// request's one log line. Until told otherwise it assumes the client went
/// away, which is what a drop without a recorded end means.
pub struct Completion {
    metrics: Arc<Metrics>,
    exchange: Exchange,
    streaming: bool,
    usage: Option<Usage>,
    outcome: Outcome,
    bytes_out: u64,
}

impl Completion {
    pub fn new(metrics: Arc<Metrics>, exchange: Exchange, streaming: bool) -> Self {
        if streaming {
            metrics.open_streams.inc();
        }
        Self {
            metrics,
            exchange,
            streaming,
            usage: None,
            outcome: Outcome::ClientDisconnected,
            bytes_out: 0,
        }
    }

    pub fn finish(&mut self, outcome: Outcome, usage: Option<Usage>) {
        self.outcome = outcome;
        self.usage = usage;
    }

    fn upstream_failed(&mut self, err: &UpstreamError) {
        self.metrics
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                provider: err.provider().to_owned(),
                kind: err.label(),
            })
            .inc();
        self.outcome = Outcome::UpstreamFailed(err.label());
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let m = &self.metrics;
        let x = &self.exchange;
        let endpoint = x.endpoint.label();
        let elapsed = x.started.elapsed();
        if self.streaming {
            m.open_streams.dec();
        }
        m.request_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
        if self.outcome == Outcome::ClientDisconnected {
            m.client_disconnects
                .get_or_create(&EndpointLabels { endpoint })
                .inc();
        }
        let usage = self.usage.unwrap_or_default();
        if self.usage.is_some() {
            m.tokens
                .get_or_create(&TokenLabels {
                    endpoint,
                    kind: "prompt",
                })
                .inc_by(usage.prompt_tokens);
            m.tokens
                .get_or_create(&TokenLabels {
                    endpoint,
                    kind: "completion",
                })
                .inc_by(usage.completion_tokens);
        }
        tracing::info!(
            target: "palisade::access",
            request_id = %x.request_id,
            method = "POST",
            path = x.endpoint.path(),
            status = x.status,
            error = match self.outcome { Outcome::UpstreamFailed(k) => k, _ => "" },
            key_id = %x.key_id,
            peer = %x.peer.map(|p| p.to_string()).unwrap_or_default(),
            model = %x.model,
            provider = %x.provider,
            stream = self.streaming,
            outcome = self.outcome.label(),
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            bytes_out = self.bytes_out,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
    }
}

/// Timeouts that apply while reading a body.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    pub idle: Duration,
    pub deadline: tokio::time::Instant,
}

impl ReadLimits {
    /// The instant the next read must finish by, and which timeout that is.
    fn next(&self) -> (tokio::time::Instant, TimeoutPhase) {
        let idle_at = tokio::time::Instant::now() + self.idle;
        if idle_at < self.deadline {
            (idle_at, TimeoutPhase::Idle)
        } else {
            (self.deadline, TimeoutPhase::Total)
        }
    }
}

/// Reads a whole upstream body. On failure the completion is marked and the
/// error returned for the caller to render.
pub async fn read_whole(
    mut body: Incoming,
    limits: ReadLimits,
    provider: &Arc<str>,
    completion: &mut Completion,
) -> Result<Bytes, UpstreamError> {
    let mut buf = Vec::new();
    let fail = |kind| UpstreamError::new(Arc::clone(provider), kind);
    loop {
        let (until, phase) = limits.next();
        let frame = match timeout_at(until, body.frame()).await {
            Err(_) => {
                let e = fail(UpstreamErrorKind::Timeout(phase));
                completion.upstream_failed(&e);
                return Err(e);
            }
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                let e = fail(UpstreamErrorKind::Protocol);
                completion.upstream_failed(&e);
                return Err(e);
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_WHOLE_RESPONSE {
                let e = fail(UpstreamErrorKind::TooLarge);
                completion.upstream_failed(&e);
                return Err(e);
            }
            buf.extend_from_slice(&data);
        }
    }
    completion.bytes_out = buf.len() as u64;
    completion.finish(Outcome::Completed, usage::from_body(&buf));
    Ok(Bytes::from(buf))
}

/// The state of one relayed stream.
pub struct SseRelay {
    body: Incoming,
    splitter: EventSplitter,
    usage: StreamUsage,
    /// The gateway asked for usage on the client's behalf: hide it again.
    hide_usage: bool,
    dialect: Dialect,
    limits: ReadLimits,
    provider: Arc<str>,
    completion: Completion,
    finished: bool,
}

impl SseRelay {
    pub fn new(
        body: Incoming,
        endpoint: Endpoint,
        hide_usage: bool,
        limits: ReadLimits,
        provider: Arc<str>,
        completion: Completion,
    ) -> Self {
        Self {
            body,
            splitter: EventSplitter::new(),
            usage: StreamUsage::new(endpoint),
            hide_usage,
            dialect: endpoint.dialect(),
            limits,
            provider,
            completion,
            finished: false,
        }
    }

    /// The next bytes for the client, or `None` at the end.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.finished {
                return None;
            }
            let (until, phase) = self.limits.next();
            let frame = match timeout_at(until, self.body.frame()).await {
                Err(_) => return Some(self.fail(UpstreamErrorKind::Timeout(phase))),
                Ok(Some(Err(_))) => return Some(self.fail(UpstreamErrorKind::Protocol)),
                Ok(None) => return self.end(),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if self.splitter.push(&data).is_err() {
                return Some(self.fail(UpstreamErrorKind::TooLarge));
            }
            let mut out = Vec::new();
            while let Some(raw) = self.splitter.next_event() {
                self.forward(raw, &mut out);
            }
            if !out.is_empty() {
                self.completion.bytes_out += out.len() as u64;
                return Some(Bytes::from(out));
            }
        }
    }

    fn forward(&mut self, raw: Vec<u8>, out: &mut Vec<u8>) {
        let role = self.usage.observe(&Event::parse(&raw));
        if !self.hide_usage {
            out.extend_from_slice(&raw);
            return;
        }
        match role {
            EventRole::UsageOnly => {}
            _ => match usage::strip_null_usage(&raw) {
                Some(stripped) => out.extend_from_slice(&stripped),
                None => out.extend_from_slice(&raw),
            },
        }
    }

    /// The upstream ended the body.
    fn end(&mut self) -> Option<Bytes> {
        self.finished = true;
        let mut out = Vec::new();
        if let Some(rest) = self.splitter.finish() {
            self.forward(rest, &mut out);
        }
        self.completion
            .finish(Outcome::Completed, self.usage.usage());
        (!out.is_empty()).then(|| Bytes::from(out))
    }

    /// Ends the stream with an error event in the caller's dialect.
    fn fail(&mut self, kind: UpstreamErrorKind) -> Bytes {
        self.finished = true;
        let err = UpstreamError::new(Arc::clone(&self.provider), kind);
        self.completion.upstream_failed(&err);
        self.completion.usage = self.usage.usage();
        tracing::warn!(
            target: "palisade::relay",
            provider = %self.provider,
            kind = err.label(),
            "upstream failed mid-stream; sending an error event"
        );
        Bytes::from(
            ApiError::from_upstream(&err, self.dialect)
                .body()
                .to_sse(self.dialect),
        )
    }
}

/// The relay as a response body.
pub fn sse_body(relay: SseRelay) -> axum::body::Body {
    let stream = futures_util::stream::unfold(relay, |mut relay| async move {
        let chunk = relay.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), relay))
    });
    axum::body::Body::from_stream(stream)
}
