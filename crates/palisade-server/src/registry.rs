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

#[derive(Debug)]
pub struct Model {
    name: String,
    provider: Arc<Provider>,
    upstream_model: String,
    /// The upstream URL per endpoint the provider serves, built once.
    uris: [Option<Uri>; Endpoint::ALL.len()],
}

impl Model {
    pub fn name(&self) -> &str {
        &self.name
    }

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
}

#[derive(Debug, Default)]
pub struct Registry {
    by_name: HashMap<String, Arc<Model>>,
    ordered: Vec<Arc<Model>>,
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
        for m in &config.models {
            // Validation guarantees the provider exists.
            let Some(provider) = providers.get(m.provider.as_str()) else {
                continue;
            };
            let upstream_model = m.upstream_model().to_owned();
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
                let uri =
                    provider
                        .uri(endpoint, &upstream_model)
                        .map_err(|_| RegistryError::Url {
                            model: m.name.clone(),
                        })?;
                uris[endpoint.index()] = Some(uri);
            }
            let model = Arc::new(Model {
                name: m.name.clone(),
                provider: Arc::clone(provider),
                upstream_model,
                uris,
            });
            registry.by_name.insert(m.name.clone(), Arc::clone(&model));
            registry.ordered.push(model);
        }
        Ok(registry)
    }

    pub fn model(&self, name: &str) -> Option<&Arc<Model>> {
        self.by_name.get(name)
    }

    /// Models in config order.
    pub fn models(&self) -> &[Arc<Model>] {
        &self.ordered
    }
}
