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

use crate::access_log::{AccessRecord, ExchangeFields};
use crate::audit::Completed;
use crate::error::ApiError;
use crate::metrics::{EndpointLabels, TokenLabels, UpstreamErrorLabels};
use crate::restore::EventRestorer;
use crate::state::AppState;
use crate::upstream::{TimeoutPhase, UpstreamError, UpstreamErrorKind};
use palisade_dlp::Restorer;

/// How much of a streamed answer's text is kept for data protection's
/// count.
pub const MAX_SCANNED: usize = 1 << 20;

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
    pub started: Instant,
    /// The sequence number of the `request.received` entry.
    pub received_seq: u64,
    pub bytes_in: u64,
}

/// The status recorded for an exchange the client abandoned before an
/// answer was sent (nginx's convention).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// One proxied exchange, from routing to its end. Its end is recorded
/// exactly once — metrics and the request's access-log line — by
/// [`finish`](Self::finish), [`upstream_failed`](Self::upstream_failed), or,
/// if neither was called, when it is dropped: a drop without a recorded end
/// means the client went away.
pub struct Completion {
    state: AppState,
    exchange: Exchange,
    status: u16,
    streaming: bool,
    bytes_out: u64,
    upstream_latency: Option<Duration>,
    recorded: bool,
    /// What data protection found in the answer.
    response_detections: Option<serde_json::Value>,
    /// Concurrency slots, given back when the exchange ends.
    _slots: Option<crate::limits::Slots>,
    /// Tokens reserved, settled against the usage reported at the end.
    charge: Option<crate::limits::TokenCharge>,
    /// Budgets reserved, and the model's price, settled likewise.
    budget: Option<(crate::budgets::BudgetCharge, Option<palisade_config::Price>)>,
    /// What was asked, when its bound was reserved instead of its count:
    /// without a usage report the exchange settles to the count.
    uncounted: Option<crate::limits::Ask>,
    /// Attempts that failed before the provider now in `exchange`.
    failed_attempts: Option<serde_json::Value>,
}

impl Completion {
    /// An exchange holding concurrency `slots` until it ends, and a token
    /// `charge` to settle then.
    pub fn new_limited(
        slots: crate::limits::Slots,
        charge: Option<crate::limits::TokenCharge>,
        budget: Option<(crate::budgets::BudgetCharge, Option<palisade_config::Price>)>,
        uncounted: Option<crate::limits::Ask>,
        state: AppState,
        exchange: Exchange,
    ) -> Self {
        let mut c = Self::new(state, exchange);
        c._slots = Some(slots);
        c.charge = charge;
        c.budget = budget;
        c.uncounted = uncounted;
        c
    }

    pub fn new(state: AppState, exchange: Exchange) -> Self {
        Self {
            state,
            exchange,
            status: CLIENT_CLOSED_REQUEST,
            streaming: false,
            bytes_out: 0,
            upstream_latency: None,
            recorded: false,
            response_detections: None,
            _slots: None,
            charge: None,
            budget: None,
            uncounted: None,
            failed_attempts: None,
        }
    }

    /// The exchange goes to `provider` now.
    pub fn retarget(&mut self, provider: Arc<str>) {
        if *self.exchange.provider != *provider {
            self.exchange.provider = provider;
        }
    }

    /// The attempts that failed so far.
    pub fn attempts(&mut self, failed: &[serde_json::Value]) {
        self.failed_attempts = Some(serde_json::Value::from(failed.to_vec()));
    }

    /// Data protection's counts for the answer, for `request.completed`.
    pub fn response_detections(&mut self, found: Option<serde_json::Value>) {
        self.response_detections = found;
    }

    /// The answer's head is going out with `status`.
    pub fn responding(&mut self, status: u16, streaming: bool) {
        self.status = status;
        if streaming && !self.streaming {
            self.streaming = true;
            self.state.metrics().open_streams.inc();
        }
    }

    /// Time from sending upstream to the response head.
    pub fn upstream_latency(&mut self, d: Duration) {
        self.upstream_latency = Some(d);
    }

    pub fn add_bytes_out(&mut self, n: usize) {
        self.bytes_out += n as u64;
    }

    /// The exchange ended normally.
    pub fn finish(&mut self, usage: Option<Usage>) {
        self.record(Outcome::Completed, usage);
    }

    /// The provider failed; `status` is what the client was (or will be)
    /// told.
    pub fn upstream_failed(&mut self, err: &UpstreamError, status: u16, usage: Option<Usage>) {
        self.state
            .metrics()
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                provider: err.provider().to_owned(),
                kind: err.label(),
            })
            .inc();
        if !self.streaming {
            self.status = status;
        }
        self.record(Outcome::UpstreamFailed(err.label()), usage);
    }

    fn record(&mut self, outcome: Outcome, usage: Option<Usage>) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let m = self.state.metrics();
        let x = &self.exchange;
        let endpoint = x.endpoint.label();
        let elapsed = x.started.elapsed();
        if self.streaming {
            m.open_streams.dec();
        }
        m.request_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(elapsed.as_secs_f64());
        if outcome == Outcome::ClientDisconnected {
            m.client_disconnects
                .get_or_create(&EndpointLabels { endpoint })
                .inc();
        }
        if let Some(u) = usage {
            m.tokens
                .get_or_create(&TokenLabels {
                    endpoint,
                    kind: "prompt",
                })
                .inc_by(u.prompt_tokens);
            m.tokens
                .get_or_create(&TokenLabels {
                    endpoint,
                    kind: "completion",
                })
                .inc_by(u.completion_tokens);
        }
        // Tokens reserved at admission are settled against the usage the
        // provider reported; without a report the reservation stands — the
        // prompt's count, if its bound was reserved instead.
        let spent = match (usage.as_ref(), self.uncounted.take()) {
            (Some(u), _) => {
                let price = self.budget.as_ref().and_then(|(_, price)| *price);
                Some((
                    u.prompt_tokens + u.completion_tokens,
                    price.map_or(0.0, |p| p.cost(u.prompt_tokens, u.completion_tokens)),
                ))
            }
            (None, Some(ask)) => {
                let counted = ask.count();
                Some((counted.tokens, counted.cost))
            }
            (None, None) => None,
        };
        if let (Some(charge), Some((tokens, _))) = (self.charge.take(), spent) {
            self.state.limits().settle(&charge, tokens);
        }
        if let (Some((charge, _)), Some((tokens, cost))) = (self.budget.take(), spent) {
            self.state.limits().settle_budget(&charge, tokens, cost);
        }
        let usage = usage.unwrap_or_default();
        let error = match outcome {
            Outcome::UpstreamFailed(k) => k,
            _ => "",
        };
        self.state.audit().completed(&Completed {
            request_id: &x.request_id,
            received_seq: x.received_seq,
            status: self.status,
            outcome: outcome.label(),
            error,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            latency_us: elapsed.as_micros() as u64,
            upstream_latency_us: self.upstream_latency.map(|d| d.as_micros() as u64),
            bytes_in: x.bytes_in,
            bytes_out: self.bytes_out,
            client_disconnected: outcome == Outcome::ClientDisconnected,
            response_detections: self.response_detections.as_ref(),
            failover: self
                .failed_attempts
                .as_ref()
                .map(|f| (x.provider.as_ref(), f)),
        });
        self.state.access_log().record(&AccessRecord {
            request_id: &x.request_id,
            method: "POST",
            path: x.endpoint.path(),
            status: self.status,
            error,
            key_id: &x.key_id,
            peer: x.peer,
            exchange: Some(ExchangeFields {
                model: &x.model,
                provider: &x.provider,
                stream: self.streaming,
                outcome: outcome.label(),
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                bytes_out: self.bytes_out,
            }),
            duration: elapsed,
        });
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.record(Outcome::ClientDisconnected, None);
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

/// Reads a whole upstream body within the timeouts and
/// [`MAX_WHOLE_RESPONSE`].
pub async fn read_whole(
    mut body: Incoming,
    limits: ReadLimits,
    provider: &Arc<str>,
) -> Result<Bytes, UpstreamError> {
    let mut buf = Vec::new();
    let fail = |kind| UpstreamError::new(Arc::clone(provider), kind);
    loop {
        let (until, phase) = limits.next();
        let frame = match timeout_at(until, body.frame()).await {
            Err(_) => return Err(fail(UpstreamErrorKind::Timeout(phase))),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(fail(UpstreamErrorKind::Protocol)),
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > MAX_WHOLE_RESPONSE {
                return Err(fail(UpstreamErrorKind::TooLarge));
            }
            buf.extend_from_slice(&data);
        }
    }
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
    /// Puts tokenized values back, when the request had any.
    restorer: Option<EventRestorer>,
    /// The answer's streamed text, kept for data protection's count.
    scan: Option<(Arc<crate::protection::TenantProtection>, String)>,
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
            restorer: None,
            scan: None,
        }
    }

    /// Counts what data protection finds in the streamed text (up to
    /// [`MAX_SCANNED`] bytes of it), for `request.completed`.
    pub fn scanning(mut self, tenant: Arc<crate::protection::TenantProtection>) -> Self {
        self.scan = Some((tenant, String::new()));
        self
    }

    /// Restores tokenized values in the events, after redacting the
    /// model's output when `redact` is given (see [`EventRestorer`]).
    pub fn rewriting(
        mut self,
        restorer: Restorer,
        redact: Option<Arc<crate::protection::TenantProtection>>,
    ) -> Self {
        self.restorer = Some(EventRestorer::new(restorer, redact));
        self
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
                self.completion.add_bytes_out(out.len());
                return Some(Bytes::from(out));
            }
        }
    }

    fn forward(&mut self, raw: Vec<u8>, out: &mut Vec<u8>) {
        let parsed = Event::parse(&raw);
        if let Some((_, text)) = &mut self.scan
            && text.len() < MAX_SCANNED
        {
            crate::restore::append_pieces(&parsed.data, text);
        }
        let role = self.usage.observe(&parsed);
        let event = if !self.hide_usage {
            raw
        } else {
            match role {
                EventRole::UsageOnly => return,
                _ => usage::strip_null_usage(&raw).unwrap_or(raw),
            }
        };
        match &mut self.restorer {
            Some(r) => r.event(&event, out),
            None => out.extend_from_slice(&event),
        }
    }

    /// Whatever the restorer still holds, before the stream ends.
    fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some(r) = &mut self.restorer {
            r.flush(out);
        }
    }

    /// The upstream ended the body.
    fn end(&mut self) -> Option<Bytes> {
        self.finished = true;
        let mut out = Vec::new();
        if let Some(rest) = self.splitter.finish() {
            self.forward(rest, &mut out);
        }
        self.flush(&mut out);
        if let Some((tenant, text)) = self.scan.take() {
            let mut session = palisade_dlp::Session::new();
            let action = match tenant.responses {
                crate::protection::Responses::Redact => palisade_dlp::Action::Redact,
                _ => palisade_dlp::Action::Detect,
            };
            let policy = palisade_dlp::Policy::new(action);
            session.protect(&tenant.detector, &policy, &text);
            self.completion
                .response_detections(crate::protection::detections(&session));
        }
        self.completion.add_bytes_out(out.len());
        self.completion.finish(self.usage.usage());
        (!out.is_empty()).then(|| Bytes::from(out))
    }

    /// Ends the stream with an error event in the caller's dialect.
    fn fail(&mut self, kind: UpstreamErrorKind) -> Bytes {
        self.finished = true;
        let err = UpstreamError::new(Arc::clone(&self.provider), kind);
        let mut event = Vec::new();
        self.flush(&mut event);
        event.extend_from_slice(
            ApiError::from_upstream(&err, self.dialect)
                .body()
                .to_sse(self.dialect)
                .as_ref(),
        );
        self.completion.add_bytes_out(event.len());
        self.completion
            .upstream_failed(&err, 200, self.usage.usage());
        tracing::warn!(
            target: "palisade::relay",
            provider = %self.provider,
            kind = err.label(),
            "upstream failed mid-stream; sending an error event"
        );
        Bytes::from(event)
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
