//! The async shell: the watch stream with fail-over, atomic apply, last-known-good, metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ops::register;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use proto::v1 as pb;
use proto::v1::route_distribution_client::RouteDistributionClient;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use proto::status::NodeLoad;

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::persist;
use crate::table::{Table, validate, version};

pub use ops::unix_ms as now_ms;

/// The agent's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Version of the table held.
    pub table_version: IntGauge,
    /// Age of the table held (since it was computed), seconds; set at scrape time.
    pub table_age: IntGauge,
    /// Updates by result: `applied`, `refused`, `stale`, `repeat`.
    pub updates: IntCounterVec,
    /// 1 while a watch stream is open.
    pub connected: IntGauge,
    /// Failures to write the last-known-good file.
    pub persist_failures: IntGauge,
    /// Load reports from the media server refused, by reason.
    pub status_rejected: IntCounterVec,
    /// Route reads refused for their query (`axon_agent_api_rejected_total{reason}`).
    pub api_rejected: IntCounterVec,
    /// Route reads waiting for a new table now (`axon_agent_route_waiters`).
    pub route_waiters: IntGauge,
    /// Load reports sent to a controller.
    pub status_sent: IntCounter,
    /// Configuration reloads (SIGHUP), by result: `applied` or `refused`.
    pub config_reloads: IntCounterVec,
    /// The TLS files' expiry. The agent reads its files at every connection to a controller,
    /// so a replacement found by the periodic check needs no load of its own: it is only
    /// counted, and the gauges follow it.
    pub tls: ops::tls::TlsMetrics,
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        ops::register_process(&registry, env!("CARGO_PKG_VERSION"));
        let r = &registry;
        let m = Metrics {
            table_version: register(
                r,
                IntGauge::new("axon_agent_table_version", "Version of the table held."),
            ),
            table_age: register(
                r,
                IntGauge::new("axon_agent_table_age_seconds", "Age of the table held."),
            ),
            updates: register(
                r,
                IntCounterVec::new(
                    Opts::new("axon_agent_updates_total", "Route updates by result."),
                    &["result"],
                ),
            ),
            connected: register(
                r,
                IntGauge::new(
                    "axon_agent_controller_connected",
                    "1 while a watch stream is open.",
                ),
            ),
            persist_failures: register(
                r,
                IntGauge::new(
                    "axon_agent_persist_failures_total",
                    "Failures to write the last-known-good table.",
                ),
            ),
            status_rejected: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_agent_status_rejected_total",
                        "Load reports from the media server refused, by reason.",
                    ),
                    &["reason"],
                ),
            ),
            api_rejected: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_agent_api_rejected_total",
                        "Route reads from the media server refused for their query, by reason.",
                    ),
                    &["reason"],
                ),
            ),
            route_waiters: register(
                r,
                IntGauge::new(
                    "axon_agent_route_waiters",
                    "Route reads waiting for a table other than the one they hold.",
                ),
            ),
            status_sent: register(
                r,
                IntCounter::new(
                    "axon_agent_status_sent_total",
                    "Load reports sent to a controller.",
                ),
            ),
            config_reloads: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_agent_config_reloads_total",
                        "Configuration reloads (SIGHUP), by result: applied or refused.",
                    ),
                    &["result"],
                ),
            ),
            tls: ops::tls::TlsMetrics::register(r),
            registry,
        };
        for result in ["applied", "refused"] {
            m.config_reloads.with_label_values(&[result]);
        }
        // Every result from the start: an increase() over them sees the first refusal.
        for result in ["applied", "repeat", "stale", "refused"] {
            m.updates.with_label_values(&[result]);
        }
        for reason in ["bad_query", "too_many_waiters"] {
            m.api_rejected.with_label_values(&[reason]);
        }
        m
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        ops::render(&self.registry)
    }
}

/// What the HTTP API reads.
pub struct State {
    /// This node's site.
    pub site: String,
    /// The table in force; replaced whole on apply (readers never see half a table).
    pub table: RwLock<Option<Arc<Table>>>,
    /// Whether the table came from the controller in this run (false: last-known-good).
    pub from_controller: AtomicBool,
    /// Whether a watch stream is open.
    pub connected: AtomicBool,
    /// The media server's last load report; every watch session forwards it.
    pub status: watch::Sender<Option<NodeLoad>>,
    /// The `(epoch, version)` of the table in force, announced on every install: route
    /// reads that wait for a new table (`?after=…&wait_s=…`) wake on it.
    pub installed: watch::Sender<Option<(u64, u64)>>,
    /// Route reads that may wait at once (`max_route_waiters`; a reload may change it).
    pub max_waiters: AtomicU32,
    /// Metrics.
    pub metrics: Metrics,
}

impl State {
    /// The table in force.
    pub fn table(&self) -> Option<Arc<Table>> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn install(&self, t: Table) {
        self.metrics.table_version.set(version(&t.update).1 as i64);
        let v = t.version();
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(t));
        self.installed.send_replace(Some(v));
    }
}

/// A running agent.
pub struct AgentHandle {
    /// The local HTTP API's address.
    pub http_addr: SocketAddr,
    /// The metrics-only address (`metrics_listen`), when one is configured.
    pub metrics_addr: Option<SocketAddr>,
    /// What the API serves.
    pub state: Arc<State>,
    /// The configuration in force; the watch loop reads it at every connection and on
    /// every change.
    cfg: watch::Sender<AgentConfig>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

/// Keys a running agent cannot change: its identity, its files and listeners, its TLS.
const RESTART_ONLY: [&str; 6] = [
    "node",
    "site",
    "table_file",
    "http_listen",
    "metrics_listen",
    "tls",
];

impl AgentHandle {
    /// Applies a new configuration without a restart (SIGHUP). `controllers`, `on_change`,
    /// the back-off, `status_min_interval_ms` and `max_route_waiters` apply at once: a watch
    /// stream to a controller still listed is kept, one to a controller no longer listed is
    /// closed and the new list is tried in order; the table held, and the media server's API,
    /// are untouched. A file that changes any other key is refused whole, with the keys named;
    /// so is one that does not validate. Returns the keys that changed; counted in
    /// `axon_agent_config_reloads_total{result}`.
    pub fn reload(&self, new: AgentConfig) -> Result<Vec<String>, AgentError> {
        let r = self.apply_config(new);
        let result = if r.is_ok() { "applied" } else { "refused" };
        self.state
            .metrics
            .config_reloads
            .with_label_values(&[result])
            .inc();
        match &r {
            Ok(keys) => info!(changed = %keys.join(", "), "configuration reloaded"),
            Err(e) => warn!(error = %e, "configuration reload refused; the one in force stays"),
        }
        r
    }

    /// Counts a reload refused before it reached [`AgentHandle::reload`] (a file that does
    /// not parse).
    pub fn reload_refused(&self, why: &str) {
        self.state
            .metrics
            .config_reloads
            .with_label_values(&["refused"])
            .inc();
        warn!(
            error = why,
            "configuration reload refused; the one in force stays"
        );
    }

    fn apply_config(&self, new: AgentConfig) -> Result<Vec<String>, AgentError> {
        new.validate()?;
        let as_map = |c: &AgentConfig| match serde_json::to_value(c) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        let (old, next) = (as_map(&self.cfg.borrow()), as_map(&new));
        let changed: Vec<String> = old
            .iter()
            .filter(|(k, v)| next.get(k.as_str()) != Some(v))
            .map(|(k, _)| k.clone())
            .collect();
        let fixed: Vec<&str> = changed
            .iter()
            .map(String::as_str)
            .filter(|k| RESTART_ONLY.contains(k))
            .collect();
        if !fixed.is_empty() {
            return Err(AgentError::Config(format!(
                "{} cannot change without a restart; nothing applied",
                fixed.join(", ")
            )));
        }
        self.state
            .max_waiters
            .store(new.max_route_waiters, Ordering::Relaxed);
        self.cfg.send_replace(new);
        Ok(changed)
    }

    /// The configuration in force.
    pub fn config(&self) -> AgentConfig {
        self.cfg.borrow().clone()
    }

    /// Stops and waits for every task.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts an agent: serves the last-known-good table at once, then follows a controller.
pub async fn start(cfg: AgentConfig) -> Result<AgentHandle, AgentError> {
    cfg.validate()?;
    proto::auth::install_crypto_provider();
    let state = Arc::new(State {
        site: cfg.site.clone(),
        table: RwLock::new(None),
        from_controller: AtomicBool::new(false),
        connected: AtomicBool::new(false),
        status: watch::Sender::new(None),
        installed: watch::Sender::new(None),
        max_waiters: AtomicU32::new(cfg.max_route_waiters),
        metrics: Metrics::new(),
    });
    match persist::load(&cfg.table_file, &cfg.site) {
        Ok(Some(t)) => {
            let age_s = now_ms().saturating_sub(t.update.computed_unix_ms) / 1_000;
            info!(version = ?t.version(), age_s, "serving the last-known-good table");
            state.install(t);
        }
        Ok(None) => info!("no last-known-good table yet"),
        Err(e) => warn!(error = %e, "last-known-good table unusable; waiting for a controller"),
    }
    let listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|e| AgentError::Io {
            context: "bind HTTP".into(),
            detail: e.to_string(),
        })?;
    let http_addr = listener.local_addr().map_err(|e| AgentError::Io {
        context: "HTTP".into(),
        detail: e.to_string(),
    })?;
    let metrics_listener = match cfg.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| AgentError::Io {
                    context: "bind metrics HTTP".into(),
                    detail: e.to_string(),
                })?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(crate::http::serve(listener, state.clone(), cancel.clone()));
    if let Some(l) = metrics_listener {
        tasks.spawn(crate::http::serve_metrics(l, state.clone(), cancel.clone()));
    }
    if let Some(files) = cfg.tls.clone() {
        let (metrics, stop) = (state.metrics.tls.clone(), cancel.clone());
        metrics.observe(&files);
        tasks.spawn(async move {
            tokio::select! {
                () = ops::tls::watch(files, metrics, || Ok(())) => {}
                () = stop.cancelled() => {}
            }
        });
    }
    let cfg = watch::Sender::new(cfg);
    tasks.spawn(watch_loop(cfg.subscribe(), state.clone(), cancel.clone()));
    Ok(AgentHandle {
        http_addr,
        metrics_addr,
        state,
        cfg,
        cancel,
        tasks,
    })
}

async fn watch_loop(mut cfgs: watch::Receiver<AgentConfig>, state: Arc<State>, cancel: CancellationToken) {
    let mut backoff = None;
    let mut hooks = JoinSet::new();
    let mut next = 0usize;
    loop {
        let cfg = cfgs.borrow_and_update().clone();
        let (min, max) = (
            Duration::from_millis(cfg.backoff_min_ms),
            Duration::from_millis(cfg.backoff_max_ms),
        );
        let endpoint = cfg.controllers[next % cfg.controllers.len()].clone();
        next = next % cfg.controllers.len() + 1;
        // A reload that drops this controller from the list ends its session; one that keeps
        // it (other keys, or other controllers) does not.
        let dropped = {
            let mut cfgs = cfgs.clone();
            let endpoint = endpoint.clone();
            async move {
                loop {
                    if cfgs.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                    if !cfgs.borrow_and_update().controllers.contains(&endpoint) {
                        return;
                    }
                }
            }
        };
        let session = follow(&endpoint, &cfgs, &state, &mut hooks);
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = session => match r {
                Ok(()) => backoff = None,
                Err(e) => debug!(controller = %endpoint, error = %e, "watch stream ended"),
            },
            () = dropped => {
                info!(controller = %endpoint, "no longer listed; trying the new list");
                (backoff, next) = (None, 0);
            }
        }
        state.connected.store(false, Ordering::Relaxed);
        state.metrics.connected.set(0);
        let step = backoff.unwrap_or(min).min(max);
        backoff = Some((step * 2).min(max));
        let wait = step.mul_f64(rand::random_range(0.5..1.0));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    hooks.shutdown().await;
}

/// One watch session; returns when the stream ends.
async fn follow(
    endpoint: &str,
    cfgs: &watch::Receiver<AgentConfig>,
    state: &Arc<State>,
    hooks: &mut JoinSet<()>,
) -> Result<(), String> {
    let cfg = cfgs.borrow().clone();
    let cfg = &cfg;
    let channel = proto::auth::endpoint(endpoint, cfg.tls.as_ref())?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(16);
    let held = state.table().map(|t| t.version());
    let hello = pb::AgentHello {
        node: cfg.node.clone(),
        site: cfg.site.clone(),
        applied: held.map(|(epoch, version)| pb::TableVersion { epoch, version }),
        software: env!("CARGO_PKG_VERSION").into(),
    };
    tx.send(pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(hello)),
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut updates = RouteDistributionClient::new(channel)
        .watch(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    info!(controller = %endpoint, "watching routes");
    state.connected.store(true, Ordering::Relaxed);
    state.metrics.connected.set(1);
    // Load reports: the last one at once (a new controller knows nothing), then each new one,
    // at most one per `status_min_interval_ms` (a chatty media server is coalesced, the latest
    // report wins).
    let mut reports = state.status.subscribe();
    reports.mark_changed();
    let gap = || Duration::from_millis(cfgs.borrow().status_min_interval_ms);
    let mut next_report = tokio::time::Instant::now();
    loop {
        tokio::select! {
            update = updates.message() => {
                let Some(update) = update.map_err(|e| e.to_string())? else { break };
                let on_change = cfgs.borrow().on_change.clone();
                let reply = apply(update, cfg, on_change, state, hooks);
                tx.send(pb::AgentMessage { body: Some(reply) })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            changed = async {
                tokio::time::sleep_until(next_report).await;
                reports.changed().await
            } => {
                if changed.is_err() {
                    // The state is gone: the agent is stopping.
                    break;
                }
                let report = *reports.borrow_and_update();
                if let Some(r) = report {
                    tx.send(pb::AgentMessage {
                        body: Some(pb::agent_message::Body::Status(r.to_wire())),
                    })
                    .await.map_err(|e| e.to_string())?;
                    state.metrics.status_sent.inc();
                    next_report = tokio::time::Instant::now() + gap();
                }
            }
        }
    }
    Ok(())
}

/// Validates and applies one update; returns the Ack or Nack to send.
fn apply(
    update: pb::RouteUpdate,
    cfg: &AgentConfig,
    on_change: Option<String>,
    state: &State,
    hooks: &mut JoinSet<()>,
) -> pb::agent_message::Body {
    let v = update.version;
    let nonce = update.nonce.clone();
    let held = state.table().map(|t| t.version());
    match validate(update, &cfg.site, held, now_ms()) {
        Ok(t) => {
            if let Err(e) = persist::save(&cfg.table_file, &t) {
                // The table is valid: apply it anyway. Only static stability is at risk.
                warn!(error = %e, "cannot persist the table");
                state.metrics.persist_failures.inc();
            }
            let (epoch, version) = t.version();
            info!(epoch, version, rows = t.update.rows.len(), "route table applied");
            state.install(t);
            state.from_controller.store(true, Ordering::Relaxed);
            state.metrics.updates.with_label_values(&["applied"]).inc();
            if let Some(cmd) = on_change {
                hooks.spawn(run_hook(cmd, version));
            }
            pb::agent_message::Body::Ack(pb::Ack { version: v, nonce })
        }
        Err(AgentError::Stale { got, held }) if got == held => {
            // A resync of the table held: nothing to do, and say so.
            state.from_controller.store(true, Ordering::Relaxed);
            state.metrics.updates.with_label_values(&["repeat"]).inc();
            pb::agent_message::Body::Ack(pb::Ack { version: v, nonce })
        }
        Err(e) => {
            let label = if matches!(e, AgentError::Stale { .. }) {
                "stale"
            } else {
                "refused"
            };
            warn!(error = %e, "route update refused; keeping the table held");
            state.metrics.updates.with_label_values(&[label]).inc();
            pb::agent_message::Body::Nack(pb::Nack {
                version: v,
                nonce,
                error: e.to_string(),
            })
        }
    }
}

async fn run_hook(cmd: String, version: u64) {
    let r = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .env("AXON_VERSION", version.to_string())
        .kill_on_drop(true)
        .status()
        .await;
    match r {
        Ok(s) if s.success() => {}
        Ok(s) => warn!(command = %cmd, status = %s, "on_change hook failed"),
        Err(e) => warn!(command = %cmd, error = %e, "on_change hook did not start"),
    }
}

/// The default table file for a state directory (tests and the lab).
pub fn table_file(dir: &std::path::Path) -> PathBuf {
    dir.join("table.pb")
}
