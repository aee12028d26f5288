//! The agent's configuration: one TOML file, every key documented with its default.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::AgentError;

/// The agent's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// This media node's name, unique within its site. Default: the host name.
    pub node: String,
    /// The site this node is in. Required.
    pub site: String,
    /// Controller gRPC endpoints (`http://host:port`), tried in order with fail-over.
    /// Default `["http://127.0.0.1:7500"]`.
    pub controllers: Vec<String>,
    /// Where the last-known-good table is kept. Default `/var/lib/axon/agent/table.pb`.
    pub table_file: PathBuf,
    /// Local HTTP API for the media server (loopback only). Default `127.0.0.1:9600`.
    pub http_listen: SocketAddr,
    /// A second HTTP address serving only `/metrics`, `/healthz` and `/readyz`, for a
    /// Prometheus on another host while the media server's API stays on loopback (the API
    /// takes load reports: it is not for the network). Default none: metrics on `http_listen`
    /// only.
    pub metrics_listen: Option<SocketAddr>,
    /// A command run (via `sh -c`) after each applied table, with `AXON_VERSION` set; its
    /// failure is logged, never fatal. Default none.
    pub on_change: Option<String>,
    /// First re-connect delay, ms; doubles up to `backoff_max_ms`. Default 200.
    pub backoff_min_ms: u64,
    /// Default 5000.
    pub backoff_max_ms: u64,
    /// Load reports from the media server (`PUT /v1/status`) are forwarded to the controller
    /// at most this often, ms; the latest wins. Default 1000.
    pub status_min_interval_ms: u64,
    /// Route reads that may wait for the next table at once (`?after=…&wait_s=…`); more are
    /// answered 429 rather than held. Default 1024.
    pub max_route_waiters: u32,
    /// TLS to the controllers (then every endpoint must be `https://`): the CA that signed the
    /// controllers' certificates, and this node's certificate (agent role, naming its site).
    /// Default none (plaintext).
    pub tls: Option<proto::auth::TlsFiles>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            node: std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into()),
            site: String::new(),
            controllers: vec!["http://127.0.0.1:7500".into()],
            table_file: PathBuf::from("/var/lib/axon/agent/table.pb"),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9600)),
            metrics_listen: None,
            on_change: None,
            backoff_min_ms: 200,
            backoff_max_ms: 5_000,
            status_min_interval_ms: 1_000,
            max_route_waiters: 1_024,
            tls: None,
        }
    }
}

/// `--config`, `--print-config` and `--check-config`, as every daemon has them.
impl ops::DaemonConfig for AgentConfig {
    fn check(&self) -> Result<(), String> {
        self.validate().map(drop).map_err(|e| e.to_string())
    }
}

impl AgentConfig {
    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, AgentError> {
        <Self as ops::DaemonConfig>::parse_toml(text).map_err(AgentError::Config)
    }

    /// The effective configuration as TOML (for `--print-config`).
    pub fn to_toml(&self) -> String {
        ops::DaemonConfig::render_toml(self)
    }

    /// Checks every value.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |m: &str| Err(AgentError::Config(m.into()));
        topology::SiteId::new(self.site.clone()).map_err(|e| AgentError::Config(format!("site: {e}")))?;
        if self.node.is_empty() || self.node.len() > 128 {
            return bad("node must be 1..=128 bytes");
        }
        if self.controllers.is_empty() {
            return bad("controllers: at least one endpoint");
        }
        for c in &self.controllers {
            let https = c.starts_with("https://");
            if https != self.tls.is_some() {
                return bad(&format!(
                    "controllers: `{c}`: {}",
                    if https {
                        "https:// needs [tls] files"
                    } else {
                        "with [tls] set, endpoints must be https://"
                    }
                ));
            }
        }
        if self.backoff_min_ms == 0 || self.backoff_max_ms < self.backoff_min_ms {
            return bad("backoff_min_ms must be positive and ≤ backoff_max_ms");
        }
        if !(1..=100_000).contains(&self.max_route_waiters) {
            return bad("max_route_waiters must be 1..=100000");
        }
        Ok(())
    }
}
