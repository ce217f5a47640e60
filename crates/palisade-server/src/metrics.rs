//! Prometheus metrics, one registry per application (so tests that run
//! several gateways in one process each see their own counts).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub provider: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub endpoint: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 100 µs … ~100 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0001, 2.5, 16,
    ))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    pub upstream_duration: Family<ProviderLabels, Histogram, fn() -> Histogram>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub open_streams: Gauge,
    pub tokens: Family<TokenLabels, Counter>,
    pub client_disconnects: Family<EndpointLabels, Counter>,
    /// 1 while the Redis limits backend answers (set only when it is used).
    pub limits_backend_up: Gauge,
    pub limits_backend_switches: Family<OutcomeLabels, Counter>,
    pub limits_fallbacks: Family<OutcomeLabels, Counter>,
    /// Attempts that failed and were tried again, by provider and kind.
    pub upstream_retries: Family<UpstreamErrorLabels, Counter>,
    /// 1 while a target's circuit is open.
    pub circuit_open: Family<TargetLabels, Gauge>,
    /// 1 when a provider's last health check passed, 0 when it failed.
    pub health_check_up: Family<ProviderLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub provider: String,
    pub upstream_model: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("palisade");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by endpoint and status",
            requests.clone(),
        );
        let request_duration =
            Family::<EndpointLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response (streams: to the last event)",
            request_duration.clone(),
        );
        let upstream_duration =
            Family::<ProviderLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending upstream to the provider's response head",
            upstream_duration.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges, by provider and kind",
            upstream_errors.clone(),
        );
        let open_streams = Gauge::default();
        registry.register(
            "open_streams",
            "Streamed responses in flight",
            open_streams.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens reported by providers, by endpoint and kind",
            tokens.clone(),
        );
        let client_disconnects = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "client_disconnects",
            "Responses abandoned by the client before their end",
            client_disconnects.clone(),
        );
        let limits_backend_up = Gauge::default();
        registry.register(
            "limits_backend_up",
            "1 while the Redis limits backend answers, 0 while it is unreachable",
            limits_backend_up.clone(),
        );
        let limits_backend_switches = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "limits_backend_switches",
            "Changes of the Redis limits backend to available or unavailable",
            limits_backend_switches.clone(),
        );
        let limits_fallbacks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "limits_fallbacks",
            "Admissions decided while the Redis limits backend was unreachable: counted_locally (open) or refused (closed)",
            limits_fallbacks.clone(),
        );
        let upstream_retries = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_retries",
            "Failed upstream attempts followed by another attempt (another target, or the same after a backoff), by provider and kind",
            upstream_retries.clone(),
        );
        let circuit_open = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "circuit_open",
            "1 while a target's circuit is open (not tried until probed)",
            circuit_open.clone(),
        );
        let health_check_up = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "health_check_up",
            "1 when the provider's last active health check passed, 0 when it failed",
            health_check_up.clone(),
        );
        Self {
            registry,
            health_check_up,
            upstream_retries,
            circuit_open,
            limits_backend_up,
            limits_backend_switches,
            limits_fallbacks,
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            open_streams,
            tokens,
            client_disconnects,
        }
    }

    /// A failed attempt that is tried again.
    pub fn record_retry(&self, provider: &str, kind: &'static str) {
        self.upstream_retries
            .get_or_create(&UpstreamErrorLabels {
                provider: provider.to_owned(),
                kind,
            })
            .inc();
    }

    /// A provider's health check ran.
    pub fn health_checked(&self, provider: &str, ok: bool) {
        self.health_check_up
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .set(i64::from(ok));
    }

    /// A target's circuit opened or closed.
    pub fn circuit_changed(&self, provider: &str, upstream_model: &str, open: bool) {
        self.circuit_open
            .get_or_create(&TargetLabels {
                provider: provider.to_owned(),
                upstream_model: upstream_model.to_owned(),
            })
            .set(i64::from(open));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
