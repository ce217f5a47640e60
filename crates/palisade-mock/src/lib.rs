//! A deterministic inference provider that speaks the OpenAI and Anthropic
//! APIs: the demo's backend, the tests' upstream and the benchmarks' target.
//!
//! Every answer is a function of the request: the same request gets the
//! same bytes. Behaviour can be steered per request with headers, which the
//! gateway forwards like any other end-to-end header:
//!
//! | header | effect |
//! |---|---|
//! | `x-mock-status: 503` | answer with that status and a provider-style error body |
//! | `x-mock-delay-ms: 200` | wait before the response head |
//! | `x-mock-chunk-delay-ms: 20` | wait between stream events |
//! | `x-mock-fail-after: 3` | send that many stream events, then cut the connection |
//! | `x-mock-retry-after: 7` | with a status, add `Retry-After` |
//! | `x-mock-echo: 1` | chat and messages: reply with the last message's text (streamed in 5-byte pieces) |
//!
//! The last request received is kept for tests to inspect ([`Seen`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream;
use serde_json::{Value, json};

/// How the mock behaves when a request does not say otherwise.
#[derive(Debug, Clone)]
pub struct MockOptions {
    /// Delay before the response head.
    pub latency: Duration,
    /// Delay between stream events.
    pub chunk_delay: Duration,
    /// Words of the reply per content event.
    pub words_per_chunk: usize,
    /// Words in each reply.
    pub reply_words: usize,
    /// Answer every request with this status (as `x-mock-status` does for
    /// one): a provider that is down.
    pub status: Option<u16>,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            words_per_chunk: 2,
            reply_words: 12,
            status: None,
        }
    }
}

/// The last request the mock received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Clone)]
struct MockState {
    options: Arc<MockOptions>,
    seen: Arc<Mutex<Option<Seen>>>,
    dropped: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

/// A running mock provider.
pub struct MockServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Option<Seen>>>,
    dropped: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Binds `addr` (port 0 for any) and serves until dropped.
    pub async fn start(addr: SocketAddr, options: MockOptions) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(None));
        let dropped = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let app = router_with(
            options,
            Arc::clone(&seen),
            Arc::clone(&dropped),
            Arc::clone(&requests),
        );
        let task = tokio::spawn(async move {
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            seen,
            dropped,
            requests,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>/v1`, the `base_url` a provider entry points at.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Streams abandoned by the reader before their end.
    pub fn streams_dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }

    /// How many API requests the mock has received.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn last_request(&self) -> Option<Seen> {
        self.seen.lock().ok().and_then(|s| s.clone())
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The mock as a router, for embedding in another server.
pub fn router(options: MockOptions) -> Router {
    router_with(
        options,
        Arc::new(Mutex::new(None)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    )
}

fn router_with(
    options: MockOptions,
    seen: Arc<Mutex<Option<Seen>>>,
    dropped: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
) -> Router {
    let state = MockState {
        options: Arc::new(options),
        seen,
        dropped,
        requests,
    };
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
        // Azure OpenAI's deployment paths.
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(chat),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(embeddings),
        )
        .with_state(state)
}

/// Per-request behaviour, from defaults and `x-mock-*` headers.
struct Plan {
    status: Option<StatusCode>,
    delay: Duration,
    chunk_delay: Duration,
    fail_after: Option<usize>,
    retry_after: Option<String>,
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

impl Plan {
    fn new(options: &MockOptions, headers: &HeaderMap) -> Self {
        Self {
            status: header_u64(headers, "x-mock-status")
                .and_then(|s| u16::try_from(s).ok())
                .or(options.status)
                .and_then(|s| StatusCode::from_u16(s).ok()),
            delay: header_u64(headers, "x-mock-delay-ms")
                .map_or(options.latency, Duration::from_millis),
            chunk_delay: header_u64(headers, "x-mock-chunk-delay-ms")
                .map_or(options.chunk_delay, Duration::from_millis),
            fail_after: header_u64(headers, "x-mock-fail-after").map(|n| n as usize),
            retry_after: headers
                .get("x-mock-retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }
}

/// The parts of a request the mock answers from.
struct Call {
    body: Value,
    plan: Plan,
    prompt_tokens: u64,
    /// With `x-mock-echo`: the last message's text, to reply with.
    echo: Option<String>,
}

impl Call {
    fn text(&self, options: &MockOptions) -> String {
        self.echo.clone().unwrap_or_else(|| reply_text(options))
    }

    /// The reply in stream pieces: the echo in 5-byte pieces (on character
    /// boundaries), so that placeholders arrive split across events.
    fn pieces(&self, options: &MockOptions) -> Vec<String> {
        let Some(text) = &self.echo else {
            return pieces(options);
        };
        let mut out = Vec::new();
        let mut piece = String::new();
        for c in text.chars() {
            piece.push(c);
            if piece.len() >= 5 {
                out.push(std::mem::take(&mut piece));
            }
        }
        if !piece.is_empty() {
            out.push(piece);
        }
        out
    }
}

/// The text of the last message: a string, or its text parts joined.
fn last_message_text(body: &Value) -> String {
    let Some(content) = body
        .get("messages")
        .and_then(Value::as_array)
        .and_then(|m| m.last())
        .and_then(|m| m.get("content"))
    else {
        return String::new();
    };
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

async fn begin(
    state: &MockState,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Call, Response> {
    let path = uri.path();
    state.requests.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut seen) = state.seen.lock() {
        *seen = Some(Seen {
            path: path.to_owned(),
            query: uri.query().map(str::to_owned),
            headers: headers.clone(),
            body: body.clone(),
        });
    }
    let plan = Plan::new(&state.options, headers);
    if !plan.delay.is_zero() {
        tokio::time::sleep(plan.delay).await;
    }
    if let Some(status) = plan.status {
        let anthropic = path.ends_with("/messages");
        let body = if anthropic {
            json!({"type":"error","error":{"type":"api_error","message":"mock failure"}})
        } else {
            json!({"error":{"message":"mock failure","type":"server_error","param":null,"code":"mock_failure"}})
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(ra) = plan.retry_after.as_deref().and_then(|v| v.parse().ok()) {
            resp.headers_mut().insert(header::RETRY_AFTER, ra);
        }
        return Err(resp);
    }
    let parsed: Value = serde_json::from_slice(body).map_err(|_| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error":{"message":"invalid JSON","type":"invalid_request_error","param":null,"code":null}})),
        )
            .into_response()
    })?;
    let echo = headers
        .contains_key("x-mock-echo")
        .then(|| last_message_text(&parsed));
    Ok(Call {
        body: parsed,
        plan,
        prompt_tokens: (body.len() as u64).div_ceil(4),
        echo,
    })
}

const WORDS: &[&str] = &[
    "Hello",
    "from",
    "the",
    "Palisade",
    "demo",
    "provider.",
    "Every",
    "request",
    "you",
    "send",
    "is",
    "authenticated,",
    "checked",
    "and",
    "forwarded",
    "under",
    "your",
    "policy.",
];

fn reply_words(options: &MockOptions) -> Vec<&'static str> {
    (0..options.reply_words.max(1))
        .map(|i| WORDS[i % WORDS.len()])
        .collect()
}

/// The reply split into content pieces, spaces kept so pieces concatenate.
fn pieces(options: &MockOptions) -> Vec<String> {
    let words = reply_words(options);
    words
        .chunks(options.words_per_chunk.max(1))
        .enumerate()
        .map(|(i, chunk)| {
            let text = chunk.join(" ");
            if i == 0 { text } else { format!(" {text}") }
        })
        .collect()
}

fn reply_text(options: &MockOptions) -> String {
    reply_words(options).join(" ")
}

fn model_of(body: &Value) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock")
        .to_owned()
}

fn wants_stream(body: &Value) -> bool {
    body.get("stream").and_then(Value::as_bool).unwrap_or(false)
}

fn wants_usage(body: &Value) -> bool {
    body.pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// Counts streams that ended before their last event because the reader
/// went away (the gateway cancelled the request).
struct StreamGuard {
    dropped: Arc<AtomicUsize>,
    done: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if !self.done {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// An SSE response from a list of ready events, paced and cut as planned.
fn sse(state: &MockState, events: Vec<String>, plan: &Plan) -> Response {
    let delay = plan.chunk_delay;
    let fail_after = plan.fail_after;
    let guard = StreamGuard {
        dropped: Arc::clone(&state.dropped),
        done: false,
    };
    let queue: std::collections::VecDeque<String> = events.into();
    let body = stream::unfold(
        (queue, 0usize, guard),
        move |(mut queue, i, mut guard)| async move {
            if guard.done {
                return None;
            }
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if fail_after.is_some_and(|n| i >= n) {
                // Cutting the connection on purpose is not a reader going away.
                guard.done = true;
                return Some((
                    Err(std::io::Error::other("mock: connection cut")),
                    (queue, i + 1, guard),
                ));
            }
            match queue.pop_front() {
                Some(event) => Some((Ok(Bytes::from(event)), (queue, i + 1, guard))),
                None => {
                    guard.done = true;
                    drop(guard);
                    None
                }
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

fn named(name: &str, v: &Value) -> String {
    format!("event: {name}\ndata: {v}\n\n")
}

const CREATED: u64 = 1_700_000_000;

async fn chat(
    State(state): State<MockState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match begin(&state, &uri, &headers, &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let opts = &state.options;
    let model = model_of(&call.body);
    let completion = reply_words(opts).len() as u64;
    let usage = json!({"prompt_tokens": call.prompt_tokens, "completion_tokens": completion, "total_tokens": call.prompt_tokens + completion});
    if !wants_stream(&call.body) {
        return axum::Json(json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": call.text(opts), "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let include_usage = wants_usage(&call.body);
    let chunk = |delta: Value, finish: Value| {
        let mut v = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": CREATED, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if include_usage {
            v["usage"] = Value::Null;
        }
        data(&v)
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    events.extend(
        call.pieces(opts)
            .into_iter()
            .map(|p| chunk(json!({"content": p}), Value::Null)),
    );
    events.push(chunk(json!({}), json!("stop")));
    if include_usage {
        events.push(data(&json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": CREATED, "model": model, "choices": [], "usage": usage})));
    }
    events.push("data: [DONE]\n\n".to_owned());
    sse(&state, events, &call.plan)
}

async fn completions(
    State(state): State<MockState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match begin(&state, &uri, &headers, &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let opts = &state.options;
    let model = model_of(&call.body);
    let completion = reply_words(opts).len() as u64;
    let usage = json!({"prompt_tokens": call.prompt_tokens, "completion_tokens": completion, "total_tokens": call.prompt_tokens + completion});
    if !wants_stream(&call.body) {
        return axum::Json(json!({
            "id": "cmpl-mock", "object": "text_completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "text": reply_text(opts), "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let include_usage = wants_usage(&call.body);
    let chunk = |text: String, finish: Value| {
        let mut v = json!({"id": "cmpl-mock", "object": "text_completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]});
        if include_usage {
            v["usage"] = Value::Null;
        }
        data(&v)
    };
    let mut events: Vec<String> = pieces(opts)
        .into_iter()
        .map(|p| chunk(p, Value::Null))
        .collect();
    events.push(chunk(String::new(), json!("stop")));
    if include_usage {
        events.push(data(&json!({"id": "cmpl-mock", "object": "text_completion", "created": CREATED, "model": model, "choices": [], "usage": usage})));
    }
    events.push("data: [DONE]\n\n".to_owned());
    sse(&state, events, &call.plan)
}

async fn embeddings(
    State(state): State<MockState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match begin(&state, &uri, &headers, &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let inputs: Vec<String> = match call.body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items.iter().map(Value::to_string).collect(),
        _ => vec![String::new()],
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let seed = text
                .bytes()
                .fold(17u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
            let vector: Vec<f64> = (0..8u32)
                .map(|d| f64::from(seed.rotate_left(d * 4) % 2000) / 1000.0 - 1.0)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": vector})
        })
        .collect();
    axum::Json(json!({
        "object": "list", "data": data, "model": model_of(&call.body),
        "usage": {"prompt_tokens": call.prompt_tokens, "total_tokens": call.prompt_tokens},
    }))
    .into_response()
}

async fn responses(
    State(state): State<MockState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match begin(&state, &uri, &headers, &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let opts = &state.options;
    let model = model_of(&call.body);
    let text = reply_text(opts);
    let output_tokens = reply_words(opts).len() as u64;
    let usage = json!({"input_tokens": call.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": call.prompt_tokens + output_tokens});
    let message = |text: &str, status: &str| {
        json!({"id": "msg_mock", "type": "message", "role": "assistant", "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": []}]})
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": "resp_mock", "object": "response", "created_at": CREATED, "model": model, "status": status,
            "output": output, "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "usage": usage,
        })
    };
    if !wants_stream(&call.body) {
        return axum::Json(response(
            "completed",
            json!([message(&text, "completed")]),
            usage,
        ))
        .into_response();
    }
    let mut seq = 0u64;
    let mut ev = |name: &str, mut v: Value| {
        v["type"] = json!(name);
        v["sequence_number"] = json!(seq);
        seq += 1;
        named(name, &v)
    };
    let mut events = vec![
        ev(
            "response.created",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
        ev(
            "response.output_item.added",
            json!({"output_index": 0, "item": message("", "in_progress")}),
        ),
    ];
    for p in pieces(opts) {
        events.push(ev("response.output_text.delta", json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "delta": p, "logprobs": []})));
    }
    events.push(ev("response.output_text.done", json!({"item_id": "msg_mock", "output_index": 0, "content_index": 0, "text": text, "logprobs": []})));
    events.push(ev(
        "response.output_item.done",
        json!({"output_index": 0, "item": message(&text, "completed")}),
    ));
    events.push(ev(
        "response.completed",
        json!({"response": response("completed", json!([message(&text, "completed")]), usage)}),
    ));
    sse(&state, events, &call.plan)
}

async fn messages(
    State(state): State<MockState>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = match begin(&state, &uri, &headers, &body).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let opts = &state.options;
    let model = model_of(&call.body);
    let output_tokens = reply_words(opts).len() as u64;
    if !wants_stream(&call.body) {
        return axum::Json(json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": call.text(opts)}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": call.prompt_tokens, "output_tokens": output_tokens},
        }))
        .into_response();
    }
    let mut events = vec![
        named(
            "message_start",
            &json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": call.prompt_tokens, "output_tokens": 1}}}),
        ),
        named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        named("ping", &json!({"type": "ping"})),
    ];
    for p in call.pieces(opts) {
        events.push(named("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})));
    }
    events.push(named(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(named("message_delta", &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output_tokens}})));
    events.push(named("message_stop", &json!({"type": "message_stop"})));
    sse(&state, events, &call.plan)
}

async fn models() -> impl IntoResponse {
    axum::Json(
        json!({"object": "list", "data": [{"id": "mock", "object": "model", "created": CREATED, "owned_by": "palisade"}]}),
    )
}
