//! A small client of a running gateway's admin API, for the CLI's `--url`.
//!
//! The token comes from `PALISADE_ADMIN_TOKEN` (never a flag, so that it
//! stays out of shell history and process lists). HTTPS verifies the
//! server against the web roots plus `PALISADE_ADMIN_CA_FILE` when set.

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

pub const TOKEN_ENV: &str = "PALISADE_ADMIN_TOKEN";
pub const CA_ENV: &str = "PALISADE_ADMIN_CA_FILE";

pub struct Remote {
    base: String,
    token: String,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Remote {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let token = std::env::var(TOKEN_ENV)
            .with_context(|| format!("--url needs an admin token in {TOKEN_ENV}"))?;
        let base = url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--url must start with http:// or https://");
        }
        let ca_file = std::env::var_os(CA_ENV).map(std::path::PathBuf::from);
        let tls = palisade_server::upstream::tls_client_config(ca_file.as_deref())
            .with_context(|| format!("TLS set-up (with {CA_ENV})"))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Self {
            base,
            token,
            client: Client::builder(TokioExecutor::new()).build(https),
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let body = self.send(Method::GET, path, None).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let bytes = self.send(method, path, body).await?;
        serde_json::from_slice(&bytes)
            .context("the admin API answered with something other than JSON")
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Bytes> {
        let url = format!("{}/admin/v1{path}", self.base);
        let req = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(ToString::to_string).unwrap_or_default(),
            )))
            .with_context(|| format!("bad URL {url}"))?;
        let resp = self
            .client
            .request(req)
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("the admin API's answer broke off")?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
            bail!("the admin API refused ({status}): {message}");
        }
        Ok(bytes)
    }
}
