//! The one error type at the HTTP boundary.
//!
//! An [`ApiError`] knows what kind of failure it is (which decides the status
//! and the type and code fields the SDKs read), whose fault it was (the
//! caller's mistakes are 4xx and not retried; ours and the provider's are
//! 5xx), and the caller's dialect. It renders itself and is logged once, by
//! the access-log layer, through the [`ErrorKind`] it leaves in the
//! response's extensions. Messages never quote prompt text, upstream bodies
//! or secrets.

use std::borrow::Cow;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use palisade_dialect::Dialect;
use palisade_dialect::error::ErrorBody;

use crate::upstream::{UpstreamError, UpstreamErrorKind};

/// A low-cardinality name for what went wrong, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidRequest,
    BodyTooLarge,
    MissingKey,
    InvalidKey,
    /// A valid key used outside its scope (model, endpoint, network,
    /// max tokens).
    PermissionDenied,
    /// Too many failed authentications from the caller's address.
    AuthThrottled,
    /// Data protection found values the tenant's policy does not let leave.
    ContentBlocked,
    /// Over a request rate or concurrency limit of the key, app or tenant.
    RateLimited,
    /// A day's or month's budget of the app or tenant is spent.
    BudgetExceeded,
    ModelNotFound,
    NotFound,
    MethodNotAllowed,
    /// The provider refused the request as malformed (its 4xx).
    UpstreamRejected,
    UpstreamRateLimited,
    UpstreamUnreachable,
    UpstreamTimeout,
    /// The provider failed (its 5xx, a broken response, or a credential the
    /// provider refused).
    UpstreamFailed,
    Unavailable,
    /// The audit ledger cannot record; nothing was forwarded.
    AuditUnavailable,
    /// The shared limits store is unreachable and the gateway fails closed.
    LimitsUnavailable,
    /// No target of the model satisfies the tenant's routing policy.
    NoCompliantProvider,
    /// Every target that satisfies the policy has its circuit open.
    NoHealthyProvider,
    Internal,
}

impl ErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::BodyTooLarge => "body_too_large",
            Self::MissingKey => "missing_key",
            Self::InvalidKey => "invalid_key",
            Self::PermissionDenied => "permission_denied",
            Self::AuthThrottled => "auth_throttled",
            Self::ContentBlocked => "content_blocked",
            Self::RateLimited => "rate_limited",
            Self::BudgetExceeded => "budget_exceeded",
            Self::ModelNotFound => "model_not_found",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UpstreamRejected => "upstream_rejected",
            Self::UpstreamRateLimited => "upstream_rate_limited",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamFailed => "upstream_failed",
            Self::Unavailable => "unavailable",
            Self::AuditUnavailable => "audit_unavailable",
            Self::LimitsUnavailable => "limits_unavailable",
            Self::NoCompliantProvider => "no_compliant_provider",
            Self::NoHealthyProvider => "no_healthy_provider",
            Self::Internal => "internal",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::MissingKey | Self::InvalidKey => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied | Self::NoCompliantProvider => StatusCode::FORBIDDEN,
            Self::ContentBlocked => StatusCode::BAD_REQUEST,
            Self::AuthThrottled | Self::RateLimited | Self::BudgetExceeded => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::ModelNotFound | Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UpstreamRejected => StatusCode::BAD_REQUEST,
            Self::UpstreamRateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamUnreachable | Self::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Unavailable
            | Self::AuditUnavailable
            | Self::LimitsUnavailable
            | Self::NoHealthyProvider => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`.
    fn openai_type(self) -> &'static str {
        match self {
            Self::InvalidRequest
            | Self::BodyTooLarge
            | Self::MissingKey
            | Self::InvalidKey
            | Self::ModelNotFound
            | Self::NotFound
            | Self::MethodNotAllowed
            | Self::UpstreamRejected
            | Self::ContentBlocked => "invalid_request_error",
            Self::PermissionDenied | Self::NoCompliantProvider => "permission_error",
            Self::UpstreamRateLimited | Self::AuthThrottled | Self::RateLimited => {
                "rate_limit_error"
            }
            Self::BudgetExceeded => "insufficient_quota",
            Self::UpstreamUnreachable | Self::UpstreamTimeout | Self::UpstreamFailed => {
                "upstream_error"
            }
            Self::Unavailable
            | Self::AuditUnavailable
            | Self::LimitsUnavailable
            | Self::NoHealthyProvider
            | Self::Internal => "server_error",
        }
    }

    /// Anthropic's `error.type`.
    fn anthropic_type(self) -> &'static str {
        match self {
            Self::InvalidRequest
            | Self::MethodNotAllowed
            | Self::UpstreamRejected
            | Self::ContentBlocked => "invalid_request_error",
            Self::BodyTooLarge => "request_too_large",
            Self::MissingKey | Self::InvalidKey => "authentication_error",
            Self::PermissionDenied | Self::NoCompliantProvider => "permission_error",
            Self::AuthThrottled | Self::RateLimited | Self::BudgetExceeded => "rate_limit_error",
            Self::ModelNotFound | Self::NotFound => "not_found_error",
            Self::UpstreamRateLimited => "rate_limit_error",
            Self::UpstreamUnreachable
            | Self::UpstreamTimeout
            | Self::UpstreamFailed
            | Self::Internal => "api_error",
            Self::Unavailable | Self::LimitsUnavailable | Self::NoHealthyProvider => {
                "overloaded_error"
            }
            Self::AuditUnavailable => "api_error",
        }
    }

    /// OpenAI's `error.code`.
    fn code(self) -> Option<&'static str> {
        match self {
            Self::MissingKey => Some("missing_api_key"),
            Self::InvalidKey => Some("invalid_api_key"),
            Self::PermissionDenied => Some("permission_denied"),
            Self::AuthThrottled => Some("auth_throttled"),
            Self::ContentBlocked => Some("content_blocked"),
            Self::RateLimited => Some("rate_limit_exceeded"),
            Self::BudgetExceeded => Some("budget_exceeded"),
            Self::ModelNotFound => Some("model_not_found"),
            Self::BodyTooLarge => Some("request_too_large"),
            Self::UpstreamUnreachable => Some("upstream_unreachable"),
            Self::UpstreamTimeout => Some("upstream_timeout"),
            Self::UpstreamFailed => Some("upstream_failed"),
            Self::UpstreamRateLimited => Some("upstream_rate_limited"),
            Self::AuditUnavailable => Some("audit_unavailable"),
            Self::LimitsUnavailable => Some("limits_unavailable"),
            Self::NoCompliantProvider => Some("no_compliant_provider"),
            Self::NoHealthyProvider => Some("no_healthy_provider"),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    kind: ErrorKind,
    dialect: Dialect,
    message: Cow<'static, str>,
    param: Option<&'static str>,
    status: Option<StatusCode>,
    retry_after: Option<HeaderValue>,
    reason: Option<&'static str>,
    rate: Option<Box<crate::limits::RateStatus>>,
}

/// Why a request was refused, in more detail than its error kind, for the
/// audit record (`request.denied`'s `reason`). Never sent to the caller.
#[derive(Debug, Clone, Copy)]
pub struct DenyReason(pub &'static str);

impl ApiError {
    pub fn new(kind: ErrorKind, dialect: Dialect, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            dialect,
            message: message.into(),
            param: None,
            status: None,
            retry_after: None,
            reason: None,
            rate: None,
        }
    }

    /// The `x-ratelimit-*-requests` headers of a refusal.
    pub fn with_rate(mut self, rate: crate::limits::RateStatus) -> Self {
        self.rate = Some(Box::new(rate));
        self
    }

    /// The reason the audit record gives (see [`DenyReason`]).
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// `Retry-After`, in whole seconds (at least 1).
    pub fn with_retry_after(mut self, after: std::time::Duration) -> Self {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        self.retry_after = Some(HeaderValue::from(secs.max(1)));
        self
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| self.kind.status())
    }

    pub fn body(&self) -> ErrorBody<'_> {
        ErrorBody {
            openai_type: self.kind.openai_type(),
            anthropic_type: self.kind.anthropic_type(),
            code: self.kind.code(),
            param: self.param,
            message: &self.message,
        }
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The error a failed upstream exchange becomes. Says that the provider
    /// failed, names it, and never includes the provider's body.
    pub fn from_upstream(err: &UpstreamError, dialect: Dialect) -> Self {
        let provider = err.provider();
        let (kind, message): (ErrorKind, Cow<'static, str>) = match err.kind() {
            UpstreamErrorKind::Connect => (
                ErrorKind::UpstreamUnreachable,
                format!("provider `{provider}` could not be reached").into(),
            ),
            UpstreamErrorKind::Timeout(phase) => (
                ErrorKind::UpstreamTimeout,
                format!(
                    "provider `{provider}` did not respond in time ({} timeout)",
                    phase.label()
                )
                .into(),
            ),
            UpstreamErrorKind::Status { status, detail } => {
                let detail = detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                match *status {
                    429 => (
                        ErrorKind::UpstreamRateLimited,
                        format!("provider `{provider}` is rate limiting requests (HTTP 429{detail})").into(),
                    ),
                    401 | 403 => (
                        ErrorKind::UpstreamFailed,
                        format!("provider `{provider}` refused the gateway's credentials (HTTP {status}); check the provider's api_key").into(),
                    ),
                    400..=499 => {
                        let mut e = Self::new(
                            ErrorKind::UpstreamRejected,
                            dialect,
                            format!("provider `{provider}` rejected the request (HTTP {status}{detail})"),
                        );
                        e.status = StatusCode::from_u16(*status).ok();
                        return e;
                    }
                    _ => (
                        ErrorKind::UpstreamFailed,
                        format!("provider `{provider}` failed (HTTP {status}{detail})").into(),
                    ),
                }
            }
            UpstreamErrorKind::CircuitOpen => (
                ErrorKind::NoHealthyProvider,
                format!("provider `{provider}` is failing and is not being tried for now").into(),
            ),
            UpstreamErrorKind::Protocol | UpstreamErrorKind::TooLarge => (
                ErrorKind::UpstreamFailed,
                format!("provider `{provider}` sent a broken response").into(),
            ),
        };
        let mut e = Self::new(kind, dialect, message);
        e.retry_after = err.retry_after().cloned();
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body().to_json(self.dialect);
        let mut resp = (self.status(), body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(ra) = self.retry_after {
            headers.insert(header::RETRY_AFTER, ra);
        }
        if let Some(rate) = self.rate {
            headers.insert("x-ratelimit-limit-requests", HeaderValue::from(rate.limit));
            headers.insert("x-ratelimit-remaining-requests", HeaderValue::from(0u32));
            if let Ok(v) = HeaderValue::from_str(&crate::limits::reset_header(rate.reset)) {
                headers.insert("x-ratelimit-reset-requests", v);
            }
        }
        resp.extensions_mut().insert(self.kind);
        if let Some(reason) = self.reason {
            resp.extensions_mut().insert(DenyReason(reason));
        }
        resp
    }
}
