//! Palisade's wire formats, as pure functions over bytes: no I/O, no async.
//!
//! - [`Endpoint`] and [`Dialect`]: which API a request speaks.
//! - [`envelope`]: the top level of a request body, read without touching
//!   nested content and rewritten with unknown fields kept byte for byte.
//! - [`sse`]: incremental Server-Sent Events framing for streamed responses.
//! - [`usage`]: token counts from responses and stream events.
//! - [`error`]: error bodies and stream error events in each dialect.

pub mod envelope;
pub mod error;
pub mod sse;
pub mod usage;

#[cfg(test)]
mod robustness;

/// The API family a caller speaks; errors are rendered in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        }
    }

    /// The dialect of a request path, for errors raised before routing.
    pub fn of_path(path: &str) -> Self {
        if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Self::Anthropic
        } else {
            Self::OpenAi
        }
    }
}

/// The proxied inference endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
}

impl Endpoint {
    pub const ALL: [Self; 5] = [
        Self::ChatCompletions,
        Self::Completions,
        Self::Embeddings,
        Self::Responses,
        Self::Messages,
    ];

    /// Position in [`Self::ALL`], for tables indexed by endpoint.
    pub fn index(self) -> usize {
        match self {
            Self::ChatCompletions => 0,
            Self::Completions => 1,
            Self::Embeddings => 2,
            Self::Responses => 3,
            Self::Messages => 4,
        }
    }

    /// The path clients call on the gateway.
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Responses => "/v1/responses",
            Self::Messages => "/v1/messages",
        }
    }

    /// The path appended to a provider's `base_url` (which ends in `/v1`).
    pub fn upstream_suffix(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
            Self::Responses => "/responses",
            Self::Messages => "/messages",
        }
    }

    /// A short, stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
            Self::Messages => "messages",
        }
    }

    pub fn dialect(self) -> Dialect {
        match self {
            Self::Messages => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }

    /// Whether a request may ask for a streamed response.
    pub fn can_stream(self) -> bool {
        !matches!(self, Self::Embeddings)
    }

    /// Whether usage in a stream must be requested with
    /// `stream_options.include_usage` (OpenAI chat and legacy completions);
    /// the other streams always report it.
    pub fn usage_is_opt_in(self) -> bool {
        matches!(self, Self::ChatCompletions | Self::Completions)
    }
}
