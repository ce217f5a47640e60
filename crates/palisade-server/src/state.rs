//! The state shared by every handler: cheap to clone, built only by
//! [`AppState::new`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use palisade_config::Config;

use crate::access_log::AccessLog;
use crate::audit::Audit;
use crate::auth::Authenticator;
use crate::metrics::Metrics;
use crate::protection::Protections;
use crate::registry::Registry;

/// The per-request controls built from configuration at start-up.
pub struct Controls {
    /// Each tenant's data protection.
    pub protections: Protections,
    /// Rates, tokens and concurrency, and where they are counted.
    pub limits: crate::limits::Limits,
    /// Each tenant's routing policy.
    pub policies: crate::routing::Policies,
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    registry: Registry,
    auth: Authenticator,
    metrics: Arc<Metrics>,
    access_log: AccessLog,
    audit: Audit,
    protections: Protections,
    limits: crate::limits::Limits,
    policies: crate::routing::Policies,
    draining: AtomicBool,
}

impl AppState {
    pub fn new(
        config: Config,
        registry: Registry,
        auth: Authenticator,
        access_log: AccessLog,
        metrics: Arc<Metrics>,
        audit: Audit,
        controls: Controls,
    ) -> Self {
        let Controls {
            protections,
            limits,
            policies,
        } = controls;
        Self {
            inner: Arc::new(Inner {
                config,
                registry,
                auth,
                metrics,
                access_log,
                audit,
                limits,
                policies,
                protections,
                draining: AtomicBool::new(false),
            }),
        }
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn auth(&self) -> &Authenticator {
        &self.inner.auth
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn audit(&self) -> &Audit {
        &self.inner.audit
    }

    /// Each tenant's data protection.
    pub fn protections(&self) -> &Protections {
        &self.inner.protections
    }

    /// Which limits apply, and where they are counted.
    pub fn limits(&self) -> &crate::limits::Limits {
        &self.inner.limits
    }

    /// Each tenant's routing policy.
    pub fn policies(&self) -> &crate::routing::Policies {
        &self.inner.policies
    }

    pub fn access_log(&self) -> &AccessLog {
        &self.inner.access_log
    }

    pub fn max_body_bytes(&self) -> usize {
        self.inner.config.server.max_body_bytes
    }

    /// Set once shutdown begins: `/readyz` then answers 503 so load
    /// balancers stop sending new work while in-flight work drains.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }
}
