//! Providers and models as the proxy path uses them: credentials resolved,
//! clients built, URLs ready. Built once from a validated config.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue, Uri};
use palisade_config::{Config, ProviderKind, Timeouts};
use palisade_dialect::Endpoint;

use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{Metrics, ProviderLabels};
use crate::upstream::{self, ClientBuildError, HttpClient};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("provider `{provider}`: api_key {reference}: {source}")]
    Secret {
        provider: String,
        reference: String,
        source: palisade_config::SecretError,
    },
    #[error("provider `{provider}`: the api_key is not a valid header value")]
    SecretNotHeader { provider: String },
    #[error("provider `{provider}`: {source}")]
    Client {
        provider: String,
        source: ClientBuildError,
    },
    #[error("model `{model}`: base_url and upstream_model do not form a valid URL")]
    Url { model: String },
    #[error("model `{model}`: upstream_model must be a URL-safe deployment name for Azure OpenAI")]
    DeploymentName { model: String },
}

pub struct Provider {
    name: Arc<str>,
    kind: ProviderKind,
    base_url: String,
    auth: Option<(HeaderName, HeaderValue)>,
    api_version: Option<String>,
    timeouts: Timeouts,
    client: HttpClient,
    upstream_duration: Histogram,
    /// Region and compliance facts, for routing.
    facts: crate::routing::Facts,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl Provider {
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// Time to the response head, for this provider.
    pub fn upstream_duration(&self) -> &Histogram {
        &self.upstream_duration
    }

    /// Asks `path` under the provider's API root, with its credential;
    /// whether it answered 2xx within `timeout`.
    pub async fn check_health(&self, path: &str, timeout: std::time::Duration) -> bool {
        let Ok(uri) = format!("{}{path}", self.base_url).parse::<Uri>() else {
            return false;
        };
        let mut req = match axum::http::Request::get(uri).body(http_body_util::Full::default()) {
            Ok(r) => r,
            Err(_) => return false,
        };
        if let Some((name, value)) = &self.auth {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        if self.kind == ProviderKind::Anthropic {
            req.headers_mut().insert(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static("2023-06-01"),
            );
        }
        matches!(
            tokio::time::timeout(timeout, self.client.request(req)).await,
            Ok(Ok(r)) if r.status().is_success()
        )
    }

    /// What the provider has attested.
    pub fn facts(&self) -> &crate::routing::Facts {
        &self.facts
    }

    /// The credential header the gateway adds; never from the client.
    pub fn auth_header(&self) -> Option<&(HeaderName, HeaderValue)> {
        self.auth.as_ref()
    }

    /// Whether this provider serves `endpoint` without translation.
    pub fn serves(&self, endpoint: Endpoint) -> bool {
        match self.kind {
            ProviderKind::Openai => endpoint != Endpoint::Messages,
            ProviderKind::Anthropic => endpoint == Endpoint::Messages,
        }
    }

    /// The upstream URL for `endpoint`.
    fn uri(
        &self,
        endpoint: Endpoint,
        upstream_model: &str,
    ) -> Result<Uri, axum::http::uri::InvalidUri> {
        let suffix = endpoint.upstream_suffix();
        let s = match &self.api_version {
            Some(v) => format!(
                "{}/deployments/{upstream_model}{suffix}?api-version={v}",
                self.base_url
            ),
            None => format!("{}{suffix}", self.base_url),
        };
        s.parse()
    }
}

/// One provider and upstream model behind a model name.
#[derive(Debug)]
pub struct Target {
    provider: Arc<Provider>,
    upstream_model: String,
    /// The upstream URL per endpoint the provider serves, built once.
    uris: [Option<Uri>; Endpoint::ALL.len()],
    weight: u32,
    /// The target's own timeouts, else its provider's.
    timeouts: Timeouts,
    /// Shared by every model name with the same provider and upstream
    /// model.
    circuit: Arc<crate::routing::Circuit>,
}

impl Target {
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    pub fn upstream_model(&self) -> &str {
        &self.upstream_model
    }

    /// Where requests for `endpoint` go; `None` when the provider does not
    /// serve it.
    pub fn uri(&self, endpoint: Endpoint) -> Option<&Uri> {
        self.uris[endpoint.index()].as_ref()
    }

    pub fn weight(&self) -> u32 {
        self.weight
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    pub fn circuit(&self) -> &crate::routing::Circuit {
        &self.circuit
    }
}

#[derive(Debug)]
pub struct Model {
    name: String,
    targets: Vec<Target>,
    strategy: palisade_config::Strategy,
}

impl Model {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The targets, in configuration order (never empty).
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    pub fn strategy(&self) -> palisade_config::Strategy {
        self.strategy
    }

    /// The first target's provider: what `/v1/models` names as owner and
    /// what decides how a prompt's tokens are counted.
    pub fn provider(&self) -> &Arc<Provider> {
        &self.targets[0].provider
    }
}

#[derive(Debug, Default)]
pub struct Registry {
    by_name: HashMap<String, Arc<Model>>,
    ordered: Vec<Arc<Model>>,
    providers: HashMap<String, Arc<Provider>>,
    /// provider → (upstream model, circuit), one per target.
    circuits: HashMap<String, Vec<(String, Arc<crate::routing::Circuit>)>>,
}

impl Registry {
    /// Resolves credentials (through `env`) and builds a client per provider.
    pub fn build(
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
        metrics: &Metrics,
    ) -> Result<Self, RegistryError> {
        let mut providers: HashMap<&str, Arc<Provider>> = HashMap::new();
        for p in &config.providers {
            let auth = match &p.api_key {
                None => None,
                Some(reference) => {
                    let secret =
                        reference
                            .resolve(env)
                            .map_err(|source| RegistryError::Secret {
                                provider: p.name.clone(),
                                reference: reference.to_string(),
                                source,
                            })?;
                    let (name, value) = match (p.kind, &p.api_version) {
                        (ProviderKind::Anthropic, _) => ("x-api-key", secret.expose().to_owned()),
                        (ProviderKind::Openai, Some(_)) => ("api-key", secret.expose().to_owned()),
                        (ProviderKind::Openai, None) => {
                            ("authorization", format!("Bearer {}", secret.expose()))
                        }
                    };
                    let mut value = HeaderValue::from_str(&value).map_err(|_| {
                        RegistryError::SecretNotHeader {
                            provider: p.name.clone(),
                        }
                    })?;
                    value.set_sensitive(true);
                    Some((HeaderName::from_static(name), value))
                }
            };
            let client = upstream::build_client(p).map_err(|source| RegistryError::Client {
                provider: p.name.clone(),
                source,
            })?;
            providers.insert(
                &p.name,
                Arc::new(Provider {
                    name: Arc::from(p.name.as_str()),
                    kind: p.kind,
                    base_url: p.base_url.trim_end_matches('/').to_owned(),
                    auth,
                    api_version: p.api_version.clone(),
                    timeouts: p.timeouts,
                    client,
                    facts: crate::routing::Facts::of(p),
                    upstream_duration: metrics
                        .upstream_duration
                        .get_or_create(&ProviderLabels {
                            provider: p.name.clone(),
                        })
                        .clone(),
                }),
            );
        }
        let mut registry = Self::default();
        let mut circuits: HashMap<(String, String), Arc<crate::routing::Circuit>> = HashMap::new();
        let mut registry_circuits = Vec::new();
        for m in &config.models {
            let mut targets = Vec::new();
            for t in m.targets() {
                // Validation guarantees the provider exists.
                let Some(provider) = providers.get(t.provider.as_str()) else {
                    continue;
                };
                let upstream_model = m.target_model(&t).to_owned();
                if provider.api_version.is_some()
                    && !upstream_model
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                {
                    return Err(RegistryError::DeploymentName {
                        model: m.name.clone(),
                    });
                }
                let mut uris: [Option<Uri>; Endpoint::ALL.len()] = Default::default();
                for endpoint in Endpoint::ALL.into_iter().filter(|e| provider.serves(*e)) {
                    let uri = provider.uri(endpoint, &upstream_model).map_err(|_| {
                        RegistryError::Url {
                            model: m.name.clone(),
                        }
                    })?;
                    uris[endpoint.index()] = Some(uri);
                }
                let circuit = circuits
                    .entry((t.provider.clone(), upstream_model.clone()))
                    .or_insert_with(|| {
                        registry_circuits.push((t.provider.clone(), upstream_model.clone()));
                        let config = config
                            .providers
                            .iter()
                            .find(|p| p.name == t.provider)
                            .map(|p| p.circuit)
                            .unwrap_or_default();
                        Arc::new(crate::routing::Circuit::new(config))
                    });
                targets.push(Target {
                    provider: Arc::clone(provider),
                    upstream_model,
                    uris,
                    weight: t.weight,
                    timeouts: t.timeouts.unwrap_or(provider.timeouts),
                    circuit: Arc::clone(circuit),
                });
            }
            if targets.is_empty() {
                continue;
            }
            let model = Arc::new(Model {
                name: m.name.clone(),
                targets,
                strategy: m.strategy,
            });
            registry.by_name.insert(m.name.clone(), Arc::clone(&model));
            registry.ordered.push(model);
        }
        for (provider, upstream_model) in registry_circuits {
            if let Some(c) = circuits.get(&(provider.clone(), upstream_model.clone())) {
                registry
                    .circuits
                    .entry(provider)
                    .or_default()
                    .push((upstream_model, Arc::clone(c)));
            }
        }
        registry.providers = providers
            .into_iter()
            .map(|(name, p)| (name.to_owned(), p))
            .collect();
        Ok(registry)
    }

    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.get(name)
    }

    /// The circuits of a provider's targets, with their upstream models.
    pub fn circuits_of(
        &self,
        provider: &str,
    ) -> impl Iterator<Item = (&str, &crate::routing::Circuit)> {
        self.circuits
            .get(provider)
            .into_iter()
            .flatten()
            .map(|(m, c)| (m.as_str(), c.as_ref()))
    }

    pub fn model(&self, name: &str) -> Option<&Arc<Model>> {
        self.by_name.get(name)
    }

    /// Models in config order.
    pub fn models(&self) -> &[Arc<Model>] {
        &self.ordered
    }
}
