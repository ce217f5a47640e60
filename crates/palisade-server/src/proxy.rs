//! The proxy handlers: decode the request envelope, pick the model's
//! provider, forward, and relay the answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use palisade_dialect::envelope::Envelope;
use palisade_dialect::usage;
use palisade_dialect::{Dialect, Endpoint};
use serde_json::json;

use crate::app::ClientAddr;
use crate::audit::Received;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorKind};
use crate::registry::Provider;
use crate::relay::{self, Completion, Exchange, ReadLimits, SseRelay};
use crate::request_id::{RequestId, X_REQUEST_ID};
use crate::state::AppState;
use crate::upstream::{self, TimeoutPhase, UpstreamError, UpstreamErrorKind};
use palisade_dlp::{Restorer, Session};

/// Marks a response whose end (metrics, log line) is recorded by its
/// [`Completion`], not by the access-log layer: every answer after routing,
/// errors included.
#[derive(Debug, Clone, Copy)]
pub struct DeferredCompletion;

pub async fn chat_completions(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(state, Endpoint::ChatCompletions, req).await
}

pub async fn completions(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    forward(state, Endpoint::Completions, req).await
}

pub async fn embeddings(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    forward(state, Endpoint::Embeddings, req).await
}

pub async fn responses(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    forward(state, Endpoint::Responses, req).await
}

pub async fn messages(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    forward(state, Endpoint::Messages, req).await
}

/// `GET /v1/models`: the models this gateway serves, in the OpenAI shape, or
/// the Anthropic shape when the caller sends `anthropic-version`.
pub async fn list_models(
    State(state): State<AppState>,
    principal: Option<axum::Extension<Principal>>,
    headers: HeaderMap,
) -> Response {
    let scope = principal.as_ref().map(|p| p.scope());
    let models: Vec<_> = state
        .registry()
        .models()
        .iter()
        .filter(|m| scope.is_none_or(|s| s.allows_model(m.name())))
        .collect();
    if headers.contains_key("anthropic-version") {
        let data: Vec<_> = models
            .iter()
            .map(|m| json!({"type": "model", "id": m.name(), "display_name": m.name(), "created_at": "1970-01-01T00:00:00Z"}))
            .collect();
        let first = models.first().map(|m| m.name());
        let last = models.last().map(|m| m.name());
        return axum::Json(
            json!({"data": data, "has_more": false, "first_id": first, "last_id": last}),
        )
        .into_response();
    }
    let data: Vec<_> = models
        .iter()
        .map(|m| json!({"id": m.name(), "object": "model", "created": 0, "owned_by": m.provider().name().as_ref()}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// The key's scope applied to the request body: the model it may ask for,
/// and the most tokens it may ask for — added to a request that does not
/// bound its completion, so that the provider enforces it.
fn authorize(
    principal: &Principal,
    envelope: &mut Envelope<'_>,
    endpoint: Endpoint,
) -> Result<(), ApiError> {
    let dialect = endpoint.dialect();
    let scope = principal.scope();
    if !scope.allows_model(envelope.model()) {
        return Err(ApiError::new(
            ErrorKind::PermissionDenied,
            dialect,
            format!(
                "this API key may not use the model `{}`",
                printable(envelope.model())
            ),
        )
        .with_param("model")
        .with_reason("model_not_allowed"));
    }
    let Some(limit) = scope.max_tokens else {
        return Ok(());
    };
    match envelope.max_tokens() {
        Some(asked) if asked > u64::from(limit) => Err(ApiError::new(
            ErrorKind::PermissionDenied,
            dialect,
            format!("the request asks for up to {asked} tokens; this API key allows at most {limit} per request"),
        )
        .with_param("max_tokens")
        .with_reason("max_tokens_exceeded")),
        Some(_) => Ok(()),
        None => {
            let field = match endpoint {
                Endpoint::ChatCompletions => Some("max_completion_tokens"),
                Endpoint::Completions | Endpoint::Messages => Some("max_tokens"),
                Endpoint::Responses => Some("max_output_tokens"),
                Endpoint::Embeddings => None,
            };
            if let Some(field) = field {
                envelope.add_member(field, limit.to_string());
            }
            Ok(())
        }
    }
}

async fn forward(state: AppState, endpoint: Endpoint, req: Request) -> Result<Response, ApiError> {
    let started = Instant::now();
    let dialect = endpoint.dialect();
    let (parts, body) = req.into_parts();
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .cloned()
        .ok_or_else(|| ApiError::new(ErrorKind::Internal, dialect, "request id missing"))?;
    // The authentication layer runs before every proxy route.
    let principal = parts
        .extensions
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ApiError::new(ErrorKind::Internal, dialect, "request not authenticated"))?;
    let mut body = read_body(body, &parts.headers, state.max_body_bytes(), dialect).await?;
    let bytes_in = body.len() as u64;

    fn parse(body: &[u8], endpoint: Endpoint) -> Result<Envelope<'_>, ApiError> {
        Envelope::parse(body, endpoint).map_err(|e| {
            ApiError::new(ErrorKind::InvalidRequest, endpoint.dialect(), e.to_string())
        })
    }
    // The key's scope first: nothing is scanned for a request refused anyway.
    let (asked, openai, price) = {
        let mut first = parse(&body, endpoint)?;
        authorize(&principal, &mut first, endpoint)?;
        let openai = state
            .registry()
            .model(first.model())
            .is_some_and(|m| m.provider().kind() == palisade_config::ProviderKind::Openai);
        let price = crate::usage::price_of(state.config(), first.model());
        (first.max_tokens(), openai, price)
    };

    // Rates, tokens and concurrency: the key's, its application's, its
    // tenant's.
    let plan = state.limits().plan();
    let applicable = plan.applicable(
        principal.key_id().as_str(),
        principal.scope(),
        principal.tenant(),
        principal.app(),
    );
    let ask = if applicable.counts_tokens() {
        crate::limits::Ask {
            body: body.clone(),
            openai,
            completion: match endpoint {
                Endpoint::Embeddings => 0,
                _ => asked.unwrap_or(crate::limits::DEFAULT_COMPLETION_RESERVE),
            },
            price,
        }
    } else {
        crate::limits::Ask::default()
    };
    // Budgets first, then rates; whichever refuses, nothing stays charged.
    let admission = state
        .limits()
        .admit(&applicable, &ask, state.audit(), state.metrics())
        .await
        .map_err(|refused| rate_refusal(refused, dialect))?;
    let (rate, token_rate) = (admission.requests, admission.tokens);

    // Data protection, on every string the provider would see.
    let protection = Arc::clone(state.protections().for_tenant(principal.tenant()));
    let mut session = Session::new();
    match session.protect_json(&protection.detector, &protection.policy, &body) {
        Ok(Some(protected)) => body = Bytes::from(protected),
        Ok(None) => {}
        Err(e) => {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                dialect,
                e.to_string(),
            ));
        }
    }
    let detections = crate::protection::detections(&session);
    if let Some(kinds) = session.blocked() {
        let mut err = ApiError::new(
            ErrorKind::ContentBlocked,
            dialect,
            format!(
                "the request was not sent: it contains data this tenant's policy does not allow to leave ({})",
                kinds.join(", ")
            ),
        )
        .with_reason("dlp_blocked")
        .into_response();
        if let Some(d) = detections {
            err.extensions_mut().insert(Detections(d));
        }
        return Ok(err);
    }
    let mut envelope = parse(&body, endpoint)?;
    authorize(&principal, &mut envelope, endpoint)?;
    let model = state
        .registry()
        .model(envelope.model())
        .cloned()
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::ModelNotFound,
                dialect,
                format!(
                    "The model `{}` does not exist or you do not have access to it.",
                    printable(envelope.model())
                ),
            )
            .with_param("model")
        })?;
    // Where it may go: the tenant's policy, the request's region, the
    // targets' dialect and health.
    let policy = state.policies().for_tenant(principal.tenant());
    let region = requested_region(&parts.headers, policy, dialect)?;
    let decision = crate::routing::decide(
        &model,
        endpoint,
        policy,
        region.as_deref(),
        crate::routing::today(),
        if model.strategy() == palisade_config::Strategy::Weighted {
            crate::routing::pick()
        } else {
            0.0
        },
        Instant::now(),
    );
    let route = route_record(&model, &decision, region.as_deref());
    if decision.order.is_empty() {
        let mut err =
            no_route(&model, &decision, endpoint, principal.tenant(), dialect).into_response();
        if let Some(route) = route {
            err.extensions_mut().insert(RouteRecord(route));
        }
        return Ok(err);
    }
    let first = &model.targets()[decision.order[0]];
    let provider = Arc::clone(first.provider());

    // Ask for usage on every stream that would not report it otherwise.
    let force_usage = envelope.stream() && endpoint.usage_is_opt_in() && !envelope.include_usage();
    let stream_requested = envelope.stream();
    let body_len = bytes_in;

    let provider_name = Arc::clone(provider.name());
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);

    // The received entry is on record before anything leaves the gateway —
    // with every target the request may go to, should the first fail; a
    // request that cannot be recorded is not forwarded.
    let received_seq = state
        .audit()
        .received(&Received {
            request_id: request_id.as_str(),
            tenant: principal.tenant(),
            app: principal.app(),
            env: principal.env(),
            key_id: principal.key_id().as_str(),
            source: parts.extensions.get::<ClientAddr>().map(|c| c.0),
            endpoint: endpoint.path(),
            dialect: dialect.as_str(),
            model: model.name(),
            provider: &provider_name,
            upstream_model: first.upstream_model(),
            stream: stream_requested,
            detections: detections.as_ref(),
            route: route.as_ref(),
        })
        .await
        .map_err(|e| {
            tracing::error!(target: "palisade::audit", error = %e, "request refused: the audit ledger cannot record");
            ApiError::new(
                ErrorKind::AuditUnavailable,
                dialect,
                "the gateway cannot record this request in its audit ledger right now, so it was not forwarded",
            )
        })?;
    let seq_header = HeaderValue::from(received_seq);

    // From here on the exchange records its own end, however it ends.
    let mut completion = Completion::new_limited(
        admission.slots,
        admission.charge,
        admission.budget.map(|b| (b, ask.price)),
        admission.uncounted.then_some(ask),
        state.clone(),
        Exchange {
            request_id: request_id.as_str().to_owned(),
            key_id: principal.key_id().as_str().to_owned(),
            peer,
            endpoint,
            model: model.name().to_owned(),
            provider: Arc::clone(&provider_name),
            started,
            received_seq,
            bytes_in: body_len,
        },
    );
    let fail = |mut completion: Completion, err: UpstreamError| {
        let api = ApiError::from_upstream(&err, dialect);
        completion.upstream_failed(&err, api.status().as_u16(), None);
        let mut response = api.into_response();
        response.extensions_mut().insert(DeferredCompletion);
        response
            .headers_mut()
            .insert(X_AUDIT_SEQ.clone(), seq_header.clone());
        Ok(response)
    };

    // Attempts: the targets in order, each failure that another attempt
    // could mend (no connection, 5xx, 429, no answer in time) moving on to
    // the next target at once, or back to the last one after a backoff —
    // always before any byte of the answer has reached the client.
    let routing = &state.config().routing;
    let deadline = tokio::time::Instant::from_std(started) + first.timeouts().total;
    let mut at = 0;
    let mut backoff = routing.backoff;
    let mut failed: Vec<serde_json::Value> = Vec::new();
    let (provider, timeouts, sent, response) = loop {
        let target = &model.targets()[decision.order[at]];
        let provider = Arc::clone(target.provider());
        let name = Arc::clone(provider.name());
        completion.retarget(Arc::clone(&name));
        let probe = target.circuit().admit(Instant::now());
        let attempt = if probe == crate::routing::Admit::No {
            Err(UpstreamError::new(
                Arc::clone(&name),
                UpstreamErrorKind::CircuitOpen,
            ))
        } else {
            let body = Bytes::from(envelope.rewrite(target.upstream_model(), force_usage));
            send(
                target,
                endpoint,
                &parts.headers,
                &request_id,
                body,
                deadline,
            )
            .await
        };
        let err = match attempt {
            Ok((sent, response)) => {
                observe(&state, target, true);
                break (provider, *target.timeouts(), sent, response);
            }
            Err(err) => err,
        };
        if probe != crate::routing::Admit::No {
            // A 4xx (429 included) means the provider is up.
            let up =
                matches!(err.kind(), UpstreamErrorKind::Status { status, .. } if *status < 500);
            observe(&state, target, up);
        }
        let attempts_left = failed.len() + 1 < routing.max_attempts as usize;
        let wait = if at + 1 < decision.order.len() {
            Some(std::time::Duration::ZERO)
        } else {
            retry_wait(&err, &mut backoff, routing)
        };
        match wait {
            Some(wait)
                if err.is_retryable()
                    && attempts_left
                    && tokio::time::Instant::now() + wait < deadline =>
            {
                state.metrics().record_retry(&name, err.label());
                failed.push(json!({"provider": name.as_ref(), "upstream_model": target.upstream_model(), "error": err.label()}));
                completion.attempts(&failed);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                at = (at + 1).min(decision.order.len() - 1);
            }
            _ => return fail(completion, err),
        }
    };
    drop(envelope);
    let provider_name = Arc::clone(provider.name());
    let limits = ReadLimits {
        idle: timeouts.idle,
        deadline,
    };
    let upstream_latency = sent.elapsed();
    provider
        .upstream_duration()
        .observe(upstream_latency.as_secs_f64());
    completion.upstream_latency(upstream_latency);

    let (head, upstream_body) = response.into_parts();
    let streaming = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut builder = Response::builder().status(head.status);
    if let Some(headers) = builder.headers_mut() {
        // Room for the upstream's headers and the dozen the gateway adds
        // (rate limits, audit sequence, request id, stream hints), so the
        // map is sized once.
        headers.reserve(head.headers.len() + 12);
        copy_response_headers(&head.headers, headers);
    }
    let response = if streaming {
        completion.responding(head.status.as_u16(), true);
        let mut relay = SseRelay::new(
            upstream_body,
            endpoint,
            force_usage,
            limits,
            provider_name,
            completion,
        );
        let redact = (protection.responses == crate::protection::Responses::Redact)
            .then(|| Arc::clone(&protection));
        if session.has_tokens() || redact.is_some() {
            relay = relay.rewriting(session.restorer(), redact);
        }
        if protection.responses != crate::protection::Responses::Off {
            relay = relay.scanning(Arc::clone(&protection));
        }
        drop(session);
        builder
            .header(header::CACHE_CONTROL, "no-cache")
            .header("x-accel-buffering", "no")
            .body(relay::sse_body(relay))
    } else {
        let bytes = match relay::read_whole(upstream_body, limits, &provider_name).await {
            Ok(bytes) => bytes,
            Err(err) => return fail(completion, err),
        };
        // The model's output, when the tenant asks, before tokens go back in.
        let (scanned, found) = crate::protection::scan_answer(&protection, &bytes);
        let bytes = scanned.map_or(bytes, Bytes::from);
        completion.response_detections(found);
        // Tokenized values go back to the client as they were.
        let bytes = if session.has_tokens() {
            restore_json(&bytes, &session.restorer()).unwrap_or(bytes)
        } else {
            bytes
        };
        drop(session);
        completion.responding(head.status.as_u16(), false);
        completion.add_bytes_out(bytes.len());
        completion.finish(usage::from_body(&bytes));
        builder.body(Body::from(bytes))
    };
    let mut response = response
        .map_err(|_| ApiError::new(ErrorKind::Internal, dialect, "cannot build the response"))?;
    if let Some(rate) = rate {
        rate_headers(response.headers_mut(), "requests", rate);
    }
    if let Some(rate) = token_rate {
        rate_headers(response.headers_mut(), "tokens", rate);
    }
    response.extensions_mut().insert(DeferredCompletion);
    response
        .headers_mut()
        .insert(X_AUDIT_SEQ.clone(), seq_header);
    Ok(response)
}

/// What routing decided, for the audit entry of a request that was
/// refused for want of a target.
#[derive(Debug, Clone)]
pub struct RouteRecord(pub serde_json::Value);

/// `x-palisade-region`: the request narrows where it may be processed,
/// within its tenant's regions.
fn requested_region(
    headers: &HeaderMap,
    policy: &crate::routing::Policy,
    dialect: Dialect,
) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("x-palisade-region") else {
        return Ok(None);
    };
    let region = value
        .to_str()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if !palisade_config::is_region(&region) {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            dialect,
            "x-palisade-region must be a region such as us, eu or us-east-1",
        ));
    }
    if !policy.admits_region(&region) {
        return Err(ApiError::new(
            ErrorKind::NoCompliantProvider,
            dialect,
            format!(
                "x-palisade-region `{region}` is outside this tenant's regions ({})",
                policy.regions.join(", ")
            ),
        )
        .with_reason("region_not_allowed"));
    }
    Ok(Some(region))
}

/// The routing decision for the audit entry, when there is more to say
/// than the one provider: several targets, exclusions, a region asked for.
fn route_record(
    model: &crate::registry::Model,
    decision: &crate::routing::Decision,
    region: Option<&str>,
) -> Option<serde_json::Value> {
    if model.targets().len() == 1 && decision.excluded.is_empty() && region.is_none() {
        return None;
    }
    let targets = model.targets();
    let candidates: Vec<_> = decision
        .order
        .iter()
        .map(|i| crate::routing::describe(&targets[*i]))
        .collect();
    let excluded: Vec<_> = decision
        .excluded
        .iter()
        .map(|(i, reason)| {
            let mut t = crate::routing::describe(&targets[*i]);
            t["reason"] = json!(reason.as_str());
            t
        })
        .collect();
    let mut route = json!({"candidates": candidates, "excluded": excluded});
    if let Some(r) = region {
        route["region"] = json!(r);
    }
    Some(route)
}

/// No target may take the request: say which rule excluded each.
fn no_route(
    model: &crate::registry::Model,
    decision: &crate::routing::Decision,
    endpoint: Endpoint,
    tenant: &str,
    dialect: Dialect,
) -> ApiError {
    use crate::routing::Reason;
    let reasons = || decision.excluded.iter().map(|(_, r)| *r);
    if reasons().all(|r| r == Reason::Dialect) {
        let provider = model.provider();
        return ApiError::new(
            ErrorKind::InvalidRequest,
            dialect,
            format!(
                "model `{}` is served by a provider of kind `{}`, which does not offer {}; translating between API dialects is not supported",
                model.name(),
                provider.kind().as_str(),
                endpoint.path()
            ),
        )
        .with_param("model");
    }
    let list = decision
        .excluded
        .iter()
        .map(|(i, r)| format!("{} ({})", model.targets()[*i].provider().name(), r.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    if reasons().any(|r| r == Reason::CircuitOpen) {
        let cooldown = decision
            .excluded
            .iter()
            .find(|(_, r)| *r == Reason::CircuitOpen)
            .map(|(i, _)| model.targets()[*i].circuit().cooldown())
            .unwrap_or_default();
        return ApiError::new(
            ErrorKind::NoHealthyProvider,
            dialect,
            format!(
                "no provider of model `{}` can take the request now: {list}",
                model.name()
            ),
        )
        .with_retry_after(cooldown.max(std::time::Duration::from_secs(1)))
        .with_reason("no_healthy_provider");
    }
    ApiError::new(
        ErrorKind::NoCompliantProvider,
        dialect,
        format!(
            "no provider of model `{}` satisfies tenant `{tenant}`'s routing policy: {list}",
            model.name()
        ),
    )
    .with_reason("no_compliant_provider")
}

/// One attempt: the request to `target`; the answer's head if it is a
/// success, else the failure (the error body read for its type).
async fn send(
    target: &crate::registry::Target,
    endpoint: Endpoint,
    headers: &HeaderMap,
    request_id: &RequestId,
    body: Bytes,
    deadline: tokio::time::Instant,
) -> Result<(Instant, hyper::Response<hyper::body::Incoming>), UpstreamError> {
    let provider = target.provider();
    let name = || Arc::clone(provider.name());
    let uri = target
        .uri(endpoint)
        .cloned()
        .ok_or_else(|| UpstreamError::new(name(), UpstreamErrorKind::Protocol))?;
    let mut upstream_req = hyper::Request::builder()
        .method(Method::POST)
        .uri(uri)
        .body(Full::new(body))
        .map_err(|_| UpstreamError::new(name(), UpstreamErrorKind::Protocol))?;
    forward_headers(headers, upstream_req.headers_mut(), provider, request_id);
    let timeouts = target.timeouts();
    let first_byte_by = (tokio::time::Instant::now() + timeouts.first_byte).min(deadline);
    let sent = Instant::now();
    let response = match tokio::time::timeout_at(
        first_byte_by,
        provider.client().request(upstream_req),
    )
    .await
    {
        Err(_) => {
            let phase = if first_byte_by >= deadline {
                TimeoutPhase::Total
            } else {
                TimeoutPhase::FirstByte
            };
            return Err(UpstreamError::new(
                name(),
                UpstreamErrorKind::Timeout(phase),
            ));
        }
        Ok(Err(e)) => {
            let kind = if e.is_connect() {
                UpstreamErrorKind::Connect
            } else {
                UpstreamErrorKind::Protocol
            };
            tracing::debug!(target: "palisade::upstream", provider = %provider.name(), error = %e, "upstream request failed");
            return Err(UpstreamError::new(name(), kind));
        }
        Ok(Ok(r)) => r,
    };
    if response.status().is_success() {
        return Ok((sent, response));
    }
    let (head, body) = response.into_parts();
    let retry_after = head.headers.get(header::RETRY_AFTER).cloned();
    let limits = ReadLimits {
        idle: timeouts.idle,
        deadline,
    };
    let detail = read_error_detail(body, limits).await;
    let status = head.status.as_u16();
    Err(
        UpstreamError::new(name(), UpstreamErrorKind::Status { status, detail })
            .with_retry_after(retry_after),
    )
}

/// Records an attempt's outcome in the target's circuit; each opening and
/// closing goes on record.
fn observe(state: &AppState, target: &crate::registry::Target, ok: bool) {
    if let Some(change) = target.circuit().record(ok, Instant::now()) {
        crate::routing::report(
            state,
            target.provider().name(),
            target.upstream_model(),
            target.circuit(),
            change,
            "requests",
        );
    }
}

/// How long to wait before trying the last target again, or `None` when
/// it should not be: the provider's `Retry-After` if it gave one no longer
/// than `retry_after_max`, else the backoff, jittered, which then doubles.
fn retry_wait(
    err: &UpstreamError,
    backoff: &mut std::time::Duration,
    routing: &palisade_config::RoutingConfig,
) -> Option<std::time::Duration> {
    // Seconds; the HTTP-date form is not trusted (clocks differ) and
    // falls back to the backoff.
    if let Some(secs) = err
        .retry_after()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        let wait = std::time::Duration::from_secs(secs);
        return (wait <= routing.retry_after_max).then_some(wait);
    }
    let wait = backoff.mul_f64(0.5 + crate::routing::pick() / 2.0);
    *backoff = (*backoff * 2).min(routing.backoff_max);
    Some(wait)
}

/// OpenAI's rate headers: limit, remaining and reset, for requests and for
/// tokens.
const RATE_HEADERS: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

/// The rate headers OpenAI's clients read (`what`: requests or tokens).
fn rate_headers(headers: &mut HeaderMap, what: &str, rate: crate::limits::RateStatus) {
    let [limit, remaining, reset] = &RATE_HEADERS[usize::from(what == "tokens")];
    headers.insert(limit.clone(), HeaderValue::from(rate.limit));
    headers.insert(remaining.clone(), HeaderValue::from(rate.remaining));
    // The formatted text becomes the value without another copy.
    let reset_text = Bytes::from(crate::limits::reset_header(rate.reset));
    if let Ok(v) = HeaderValue::from_maybe_shared(reset_text) {
        headers.insert(reset.clone(), v);
    }
}

/// A request over a limit: 429 in the caller's dialect, with `Retry-After`.
fn rate_refusal(refused: crate::limits::Refusal, dialect: Dialect) -> ApiError {
    use crate::limits::Refusal;
    let reason = refused.reason();
    match refused {
        Refusal::Rate {
            level,
            retry_after,
            status,
        } => ApiError::new(
            ErrorKind::RateLimited,
            dialect,
            format!(
                "rate limit reached: {} requests per minute for this {}; try again in {}",
                status.limit,
                level.as_str(),
                crate::limits::reset_header(retry_after)
            ),
        )
        .with_retry_after(retry_after)
        .with_rate(status),
        Refusal::Tokens {
            level,
            retry_after,
            status,
        } => {
            let e = ApiError::new(
                ErrorKind::RateLimited,
                dialect,
                match retry_after {
                    Some(after) => format!(
                        "token rate limit reached: {} tokens per minute for this {}; try again in {}",
                        status.limit,
                        level.as_str(),
                        crate::limits::reset_header(after)
                    ),
                    None => format!(
                        "this request asks for more tokens than this {}'s whole limit of {} per minute; lower max_tokens or the prompt",
                        level.as_str(),
                        status.limit
                    ),
                },
            );
            match retry_after {
                Some(after) => e.with_retry_after(after),
                None => e,
            }
        }
        Refusal::Concurrency { level, limit } => ApiError::new(
            ErrorKind::RateLimited,
            dialect,
            format!(
                "too many requests in flight: at most {limit} at once for this {}",
                level.as_str()
            ),
        )
        .with_retry_after(std::time::Duration::from_secs(1)),
        Refusal::Budget(exceeded) => ApiError::new(
            ErrorKind::BudgetExceeded,
            dialect,
            format!(
                "this {}'s budget ({}) is spent; it renews with the next {}",
                exceeded.level.as_str(),
                exceeded.which,
                if exceeded.which.starts_with("daily") {
                    "day (UTC)"
                } else {
                    "month (UTC)"
                }
            ),
        ),
        Refusal::Unavailable => ApiError::new(
            ErrorKind::LimitsUnavailable,
            dialect,
            "the shared rate-limit store is unreachable and this gateway is set to refuse requests until it answers",
        )
        .with_retry_after(std::time::Duration::from_secs(1)),
    }
    .with_reason(reason)
}

/// What data protection found in a refused request, for its
/// `request.denied` entry.
#[derive(Debug, Clone)]
pub struct Detections(pub serde_json::Value);

/// A JSON response with every string's placeholders restored; `None` when
/// nothing changed or the body is not JSON (then it goes back as it came).
fn restore_json(body: &[u8], restorer: &Restorer) -> Option<Bytes> {
    palisade_dlp::json::rewrite_strings(body, palisade_dlp::json::MAX_DEPTH, &|_| false, &mut |s| {
        match restorer.restore(s) {
            std::borrow::Cow::Owned(restored) => Some(restored),
            std::borrow::Cow::Borrowed(_) => None,
        }
    })
    .ok()
    .flatten()
    .map(Bytes::from)
}

/// The sequence number of a forwarded request's `request.received` entry.
pub static X_AUDIT_SEQ: HeaderName = HeaderName::from_static("x-palisade-audit-seq");

fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(256).collect()
}

async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    dialect: Dialect,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorKind::BodyTooLarge,
            dialect,
            format!("request body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(_) => Err(ApiError::new(
            ErrorKind::InvalidRequest,
            dialect,
            "request body could not be read (connection closed early?)",
        )),
    }
}

/// Headers that never travel upstream: hop-by-hop headers, the client's own
/// credentials, values the gateway sets itself, and account selectors tied
/// to the client's credentials.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
    "authorization",
    "x-api-key",
    "api-key",
    "cookie",
    "accept-encoding",
    "x-request-id",
    "openai-organization",
    "openai-project",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-real-ip",
];

fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

fn forward_headers(
    from: &HeaderMap,
    to: &mut HeaderMap,
    provider: &Provider,
    request_id: &RequestId,
) {
    let listed = connection_listed(from);
    for (name, value) in from {
        let n = name.as_str();
        if NOT_FORWARDED.contains(&n)
            || n.starts_with("x-palisade-")
            || listed.iter().any(|l| l == n)
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
    to.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    to.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    to.insert(X_REQUEST_ID.clone(), request_id.header_value().clone());
    if provider.kind() == palisade_config::ProviderKind::Anthropic
        && !to.contains_key("anthropic-version")
    {
        to.insert(
            HeaderName::from_static("anthropic-version"),
            HeaderValue::from_static("2023-06-01"),
        );
    }
    if let Some((name, value)) = provider.auth_header() {
        to.insert(name.clone(), value.clone());
    }
}

/// Response headers that are not passed back to the client.
const NOT_RETURNED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "set-cookie",
    "x-request-id",
    "server",
    "alt-svc",
];

fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let listed = connection_listed(from);
    for (name, value) in from {
        let n = name.as_str();
        if NOT_RETURNED.contains(&n) || listed.iter().any(|l| l == n) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// Reads a little of a failed response for its error type/code tokens.
async fn read_error_detail(body: hyper::body::Incoming, limits: ReadLimits) -> Option<String> {
    const MAX: usize = 64 * 1024;
    let read = Limited::new(body, MAX).collect();
    let collected = tokio::time::timeout_at(
        limits
            .deadline
            .min(tokio::time::Instant::now() + limits.idle),
        read,
    )
    .await
    .ok()?
    .ok()?;
    upstream::error_detail(&collected.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_waits_follow_retry_after_else_a_jittered_doubling_backoff() {
        let routing = palisade_config::RoutingConfig::default();
        let status = |retry_after: Option<&'static str>| {
            UpstreamError::new(
                "p".into(),
                UpstreamErrorKind::Status {
                    status: 429,
                    detail: None,
                },
            )
            .with_retry_after(retry_after.map(HeaderValue::from_static))
        };
        let mut backoff = Duration::from_millis(100);
        assert_eq!(
            retry_wait(&status(Some("3")), &mut backoff, &routing),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_wait(&status(Some("30")), &mut backoff, &routing),
            None
        );
        // An HTTP date, or nothing: the backoff, between half and all of it.
        for (i, after) in [
            Some("Wed, 21 Oct 2026 07:28:00 GMT"),
            None,
            None,
            None,
            None,
            None,
        ]
        .into_iter()
        .enumerate()
        {
            let step = Duration::from_millis(100 * (1 << i)).min(routing.backoff_max);
            let wait = retry_wait(&status(after), &mut backoff, &routing).unwrap();
            assert!(
                wait >= step / 2 && wait <= step,
                "{i}: {wait:?} for {step:?}"
            );
        }
        assert_eq!(backoff, routing.backoff_max);
    }
}
