//! The async shell: one gRPC server (probe ingest, route distribution, admin), the compute
//! loop, and `/metrics`, `/healthz`, `/readyz`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proto::auth::Role;
pub use proto::status::NodeLoad;
use proto::v1 as pb;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use topology::{RouteTable, SiteId, TableId};
use tracing::{info, warn};

use crate::auth::Auth;
use crate::config::ControllerConfig;
use crate::core::{AutoEvent, Core, Reload, Verdict, site_update};
use crate::error::ControllerError;
use crate::ha::{Etcd, Leadership};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::store::{MemoryStore, Store};

pub use ops::unix_ms as now_ms;

/// A published table with every site's update prepared once (agents of a site share it).
#[derive(Debug)]
pub struct Published {
    /// Its `(epoch, version)`.
    pub id: TableId,
    /// The table, on the replica that computed it (a follower has only the sites' updates).
    pub table: Option<RouteTable>,
    /// Per site id: its update, nonce left empty (each send sets its own). A site this table
    /// did not build again shares the update of the table that built it, whose `version` and
    /// `computed_unix_ms` are that table's: the wire form in `encoded` carries this one's.
    pub updates: HashMap<SiteId, Arc<pb::RouteUpdate>>,
    /// The same updates encoded once, shared by every watch stream of the site.
    pub encoded: HashMap<SiteId, bytes::Bytes>,
    /// Per site id: its update as encoded by the table that built it, which a later table
    /// stamps with its own id without encoding the rows again (on the replica that computed
    /// the table; empty on a follower).
    pub built: HashMap<SiteId, bytes::Bytes>,
}

/// What the controller knows of one agent.
#[derive(Debug, Clone, Default)]
pub struct AgentRecord {
    /// The agent's site.
    pub site: String,
    /// `(epoch, version)` it last acknowledged.
    pub applied: (u64, u64),
    /// Whether its watch stream is open.
    pub connected: bool,
    /// Last message, Unix ms.
    pub last_seen_ms: u64,
    /// Its last NACK, if the latest update was refused.
    pub last_error: String,
    /// What its media server last reported, if anything.
    pub load: Option<NodeLoad>,
}

/// Checks a node's load report from the wire, stamped with its arrival time.
pub fn node_load(s: &pb::NodeStatus, at_ms: u64) -> Result<NodeLoad, ControllerError> {
    NodeLoad::new(s.sessions, s.load, at_ms).map_err(|(_, detail)| ControllerError::Rejected {
        reason: "bad_status",
        detail,
    })
}

/// What the connected nodes of one site report, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SiteLoad {
    /// Agents with an open watch stream.
    pub nodes: u32,
    /// Of those, how many reported a load.
    pub reporting: u32,
    /// Their sessions, summed.
    pub sessions: u64,
    /// Their mean load (0 when none reports).
    pub load: f64,
}

/// State shared by every task and service.
pub struct Shared {
    /// The decision core.
    pub core: Mutex<Core>,
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// The table in force, for the watch streams.
    pub published: watch::Sender<Option<Arc<Published>>>,
    /// Wakes the compute loop at once (liveness events, drains).
    pub recompute: Notify,
    /// Agents by node name.
    pub agents: Mutex<HashMap<String, AgentRecord>>,
    /// Metrics.
    pub metrics: Metrics,
    /// This controller's name.
    pub name: String,
    /// Re-send period for unchanged tables.
    pub resync: Duration,
    /// Cancelled at shutdown: every stream ends so the server can stop.
    pub cancel: CancellationToken,
    /// Who may call what.
    pub auth: Auth,
    /// Whether this replica leads, and where the leader is.
    pub leadership: watch::Sender<Leadership>,
    /// The etcd store, when replicas share one (`store.kind = "etcd"`).
    pub etcd: Option<Etcd>,
    /// How long a new leader gathers reports before publishing (etcd only).
    pub warmup: Duration,
    /// How often the leader compacts etcd's history (etcd only; none: never).
    pub compact_every: Option<Duration>,
    /// The last table this replica wrote to etcd whole or in part, while the keys there are
    /// known to be its (none after a failed write, and at first): the next table writes only
    /// the sites whose paths it moved.
    pub etcd_written: Mutex<Option<TableId>>,
    /// The routing configuration this replica last wrote to etcd with a table: written again
    /// only when it differs (or with a table written whole).
    pub etcd_routing: Mutex<Option<serde_json::Value>>,
    /// The drain log this replica last wrote to etcd with a table: written again only when
    /// it differs (or with a table written whole).
    pub etcd_drain_log: Mutex<Option<Vec<crate::store::DrainEvent>>>,
    /// The primary cost each site's update in force carries, per pair of the leader's last
    /// table (row-major; empty when there is none): what a cost's drift is measured from
    /// when deciding which sites' updates to build again.
    pub served_costs: Mutex<Vec<f32>>,
    /// Held across a computation and its publication, so tables are persisted in order.
    pub publishing: Mutex<()>,
    /// The pairs each published table moved (`axonctl changes`).
    pub journal: Mutex<Journal>,
    /// The routing sections in which this replica's configuration differs from the leader's
    /// (empty on the leader, and while they agree).
    pub config_drift: Mutex<Vec<String>>,
    /// The TLS configuration new gRPC connections are accepted with (none: plaintext); a
    /// reload reads the files again and swaps it, so rotated certificates need no restart.
    pub tls: Option<std::sync::RwLock<Arc<rustls::ServerConfig>>>,
}

impl Shared {
    /// The core, even if a panicking holder poisoned the lock (its state is still consistent:
    /// every mutation is one call).
    pub fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a new configuration without a restart (see [`Core::reconfigure`]): logged,
    /// counted, and followed by a computation at once. A refused file changes nothing.
    pub fn reload(&self, cfg: ControllerConfig) -> Result<Reload, ControllerError> {
        let rows = cfg.journal_rows;
        // The certificate files are read again (a rotation replaces them in place); files
        // that do not load refuse the whole reload.
        let tls = match cfg.tls.as_ref().map(proto::auth::TlsFiles::server) {
            Some(Err(e)) => {
                let e = ControllerError::Config(format!("tls: {e}"));
                self.reload_refused(&e);
                return Err(e);
            }
            Some(Ok(c)) => Some(c),
            None => None,
        };
        let files = cfg.tls.clone();
        let result = self.core().reconfigure(cfg);
        match &result {
            Ok(r) => {
                if let (Some(new), Some(files)) = (tls, &files) {
                    self.put_tls(new, files);
                    info!("TLS files read again: new connections use them");
                }
                self.journal().set_capacity(rows);
                self.metrics.config_reloads.with_label_values(&["applied"]).inc();
                info!(changed = ?r.changed, memory_reset = r.memory_reset, "configuration reloaded");
                self.recompute.notify_one();
            }
            Err(e) => self.reload_refused(e),
        }
        result
    }

    /// Reads the TLS files again and accepts new connections with them (the periodic check
    /// found them replaced); connections already open go on. Files that do not load change
    /// nothing.
    pub fn load_tls(&self, files: &proto::auth::TlsFiles) -> Result<(), String> {
        self.put_tls(files.server()?, files);
        Ok(())
    }

    /// Puts a TLS configuration read from `files` in force for new connections.
    fn put_tls(&self, config: rustls::ServerConfig, files: &proto::auth::TlsFiles) {
        if let Some(slot) = &self.tls {
            *slot.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
            self.metrics.tls.observe(files);
        }
    }

    /// Counts and logs a reload that did not happen (also for a file that did not parse).
    pub fn reload_refused(&self, error: &dyn std::fmt::Display) {
        self.metrics.config_reloads.with_label_values(&["refused"]).inc();
        warn!(error = %error, "configuration reload refused; the one in force stays");
    }

    /// The TLS configuration a connection accepted now is served with.
    pub fn tls_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls
            .as_ref()
            .map(|t| t.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Records how this replica's routing configuration compares with the leader's (see
    /// [`ControllerConfig::differs_from`]): logged when it changes, in
    /// `axon_controller_config_matches_leader` and in `axonctl status`.
    pub fn set_config_drift(&self, differs: Vec<String>) {
        self.metrics
            .config_matches_leader
            .set(i64::from(differs.is_empty()));
        let mut drift = self.config_drift.lock().unwrap_or_else(|e| e.into_inner());
        if *drift != differs {
            if differs.is_empty() {
                info!("routing configuration agrees with the leader's");
            } else {
                warn!(
                    sections = %differs.join(", "),
                    "routing configuration differs from the leader's: routes would move if this replica took over"
                );
            }
        }
        *drift = differs;
    }

    /// The route-change journal.
    pub fn journal(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records in the journal what `new` moved from `old`: from the two tables when this
    /// replica computed both, else (a follower, or a leader's first table after it followed)
    /// from the per-site updates. Returns the primary and backup-only changes.
    /// A failure to write the journal's file is logged and counted; the rows stay in memory.
    pub fn record_changes(&self, old: &Published, new: &Published) -> (usize, usize) {
        let mut journal = self.journal();
        let counts = match (&old.table, &new.table) {
            (Some(before), Some(after)) => journal.record(before, after),
            _ => journal.record_updates(&old.updates, &new.updates, new.id),
        };
        if let Some(e) = journal.take_file_error() {
            self.metrics
                .journal_file_errors
                .with_label_values(&["write"])
                .inc();
            warn!(error = %e, "route changes kept in memory only; the next table rewrites the file");
        }
        counts
    }

    /// The agent registry.
    pub fn agents(&self) -> MutexGuard<'_, HashMap<String, AgentRecord>> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Per site: its connected nodes and what they report.
    pub fn site_loads(&self) -> HashMap<String, SiteLoad> {
        let mut out: HashMap<String, SiteLoad> = HashMap::new();
        for a in self.agents().values().filter(|a| a.connected) {
            let s = out.entry(a.site.clone()).or_default();
            s.nodes += 1;
            if let Some(l) = a.load {
                s.reporting += 1;
                s.sessions += u64::from(l.sessions);
                s.load += l.load;
            }
        }
        for s in out.values_mut() {
            if s.reporting > 0 {
                s.load /= f64::from(s.reporting);
            }
        }
        out
    }

    /// Brings the agent gauges up to date. Called when they are read (a scrape, a
    /// publication), not on every agent message: with thousands of agents a recount per
    /// acknowledgement would cost more than the acknowledgements.
    pub fn refresh_agent_gauges(&self) {
        let latest = self
            .published
            .borrow()
            .as_ref()
            .map(|p| (p.id.epoch.0, p.id.version.0));
        {
            let agents = self.agents();
            self.metrics
                .agents_connected
                .set(agents.values().filter(|a| a.connected).count() as i64);
            self.metrics
                .agents_latest
                .set(agents.values().filter(|a| Some(a.applied) == latest).count() as i64);
        }
        let loads = self.site_loads();
        let sites: Vec<String> = self
            .core()
            .world()
            .inventory
            .sites()
            .iter()
            .map(|s| s.id.to_string())
            .collect();
        for site in sites {
            let l = loads.get(&site).copied().unwrap_or_default();
            let labels = [site.as_str()];
            self.metrics
                .site_nodes
                .with_label_values(&labels)
                .set(i64::from(l.nodes));
            self.metrics
                .site_sessions
                .with_label_values(&labels)
                .set(i64::try_from(l.sessions).unwrap_or(i64::MAX));
            self.metrics.site_load.with_label_values(&labels).set(l.load);
        }
    }

    /// Computes now and publishes a new table if it changed; persists the version counter and
    /// drains first (in etcd, fenced: a replica that no longer leads publishes nothing). Only
    /// the leader computes, and a new leader only once it has gathered reports for `warmup`.
    /// Runs on a blocking thread (etcd writes are waited for here). A table the store
    /// refused is counted, and published by the next computation that can write it, even
    /// if nothing changed since.
    pub fn compute_and_publish(&self) -> Result<bool, ControllerError> {
        let r = self.try_compute_and_publish();
        if let Err(e) = &r {
            let reason = match e {
                ControllerError::Store(_) => "store",
                ControllerError::Fenced => "fenced",
                _ => "other",
            };
            self.metrics.publish_failures.with_label_values(&[reason]).inc();
        }
        r
    }

    fn try_compute_and_publish(&self) -> Result<bool, ControllerError> {
        let _order = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let lead = self.leadership.borrow().clone();
        let Some(fence) = lead.fence else {
            return Ok(false);
        };
        if self.etcd.is_some() && lead.since.is_some_and(|t| t.elapsed() < self.warmup) {
            return Ok(false);
        }
        let started = Instant::now();
        let mut core = self.core();
        let c = core.compute(now_ms());
        self.metrics.computations.inc();
        self.metrics
            .compute_seconds
            .observe(started.elapsed().as_secs_f64());
        let mode = core.config().auto_drain.mode;
        for e in core.take_auto_events() {
            log_auto_event(&e, mode);
            self.metrics
                .auto_drain_events
                .with_label_values(&[auto_event_label(&e)])
                .inc();
        }
        {
            let world = core.world();
            let drained = core.drained_sites();
            let sick = core.sick_sites();
            let sites: Vec<(String, bool, bool)> = world
                .inventory
                .sites()
                .iter()
                .map(|s| {
                    (
                        s.id.to_string(),
                        drained.contains(&s.id),
                        sick.iter().any(|k| k.site == s.id),
                    )
                })
                .collect();
            let summary = c.changed.then(|| c.table.summary(&world.endpoint_mask()));
            self.metrics
                .observe_mesh(&world.links.health_counts(), summary.as_ref(), &sites);
        }
        let current = self.published.borrow().as_ref().map(|p| p.id);
        // Nothing new to publish only when the table in force is the one published: a table
        // the store refused before is still to go out.
        if !c.changed && current == Some(c.table.id()) {
            return Ok(false);
        }
        let publishing = Instant::now();
        let snapshot = core.snapshot();
        let routing = core.config().routing_sections();
        let id = c.table.id();
        let cause = if c.costs_only { "costs" } else { "paths" };
        let refresh = core.config().engine.refresh.clone();
        let computed_ms = c.table.computed_at_ms();
        // A site none of whose paths moved, and none of whose costs drifted past the refresh
        // margin from those its update carries, keeps the update of the table that last
        // rewrote it (its costs and reasons too), stamped with this table's id: the update is
        // the same on every replica, only the sites that moved are written to etcd again, and
        // only they are built (at 500 sites, building every site's rows for every table was
        // most of a publication's time). Told from the routes, without building the update.
        let base = self.published.borrow().clone();
        let sites = c.table.sites();
        let n = sites.len();
        let mut served = self.served_costs.lock().unwrap_or_else(|e| e.into_inner());
        let kept_from = base
            .as_ref()
            .filter(|b| b.id.epoch == id.epoch && served.len() == n * n)
            .and_then(|b| Some((b.table.as_ref()?, &b.updates, &b.built)))
            .filter(|(t, _, _)| t.sites() == sites);
        // What every site's update shares (drains, the sites known and drained), built once
        // and compared with the updates kept: every update of a table shares them.
        let shared_parts = |u: &pb::RouteUpdate| {
            (
                u.drains.clone(),
                u.drained_sites.clone(),
                u.known_sites.clone(),
                u.max_relays,
            )
        };
        let fresh_parts = sites
            .first()
            .and_then(|s| site_update(&core, &c.table, s, String::new()).ok())
            .map(|u| shared_parts(&u));
        let kept_from = kept_from.filter(|(_, updates, _)| {
            updates
                .values()
                .next()
                .is_some_and(|u| Some(shared_parts(u)) == fresh_parts)
        });
        if kept_from.is_none() {
            served.clear();
            served.resize(n * n, f32::INFINITY);
        }
        let (mut updates, mut encoded, mut built) = (HashMap::new(), HashMap::new(), HashMap::new());
        let stamp = pb::TableVersion {
            epoch: id.epoch.0,
            version: id.version.0,
        };
        let mut moved: std::collections::HashSet<SiteId> = std::collections::HashSet::new();
        for (a, site) in core.world().inventory.sites().iter().enumerate() {
            if site.role != topology::Role::Active {
                continue;
            }
            let row = a * n..(a + 1) * n;
            if let Some((prev, old, old_built)) = kept_from
                && let Some(u) = old.get(&site.id)
                && let Some(body) = old_built.get(&site.id)
                && rows_stand(prev.routes(), c.table.routes(), a, &served[row.clone()], &refresh)
                && let Some(stamped) = proto::wire::EncodedRouteUpdate::restamp(body, stamp, computed_ms)
            {
                updates.insert(site.id.clone(), Arc::clone(u));
                encoded.insert(site.id.clone(), stamped);
                built.insert(site.id.clone(), body.clone());
                continue;
            }
            if let Ok(u) = site_update(&core, &c.table, &site.id, String::new()) {
                for (cost, r) in served[row]
                    .iter_mut()
                    .zip(&c.table.routes().pairs()[a * n..(a + 1) * n])
                {
                    *cost = r.primary_cost;
                }
                let body = proto::wire::EncodedRouteUpdate::encode_shared(&u);
                encoded.insert(site.id.clone(), body.clone());
                built.insert(site.id.clone(), body);
                updates.insert(site.id.clone(), Arc::new(u));
                moved.insert(site.id.clone());
            }
        }
        drop(served);
        drop(core);
        let sites_built = moved.len();
        let mut sites_written = None;
        match &self.etcd {
            Some(etcd) => {
                let mut written = self.etcd_written.lock().unwrap_or_else(|e| e.into_inner());
                // When etcd holds this leadership's last table, only the sites that moved.
                let only = base
                    .as_ref()
                    .filter(|b| Some(b.id) == *written && b.id.epoch == id.epoch)
                    .map(|_| &moved);
                let mut last_routing = self.etcd_routing.lock().unwrap_or_else(|e| e.into_inner());
                let new_routing =
                    (only.is_none() || last_routing.as_ref() != Some(&routing)).then_some(&routing);
                let mut last_log = self.etcd_drain_log.lock().unwrap_or_else(|e| e.into_inner());
                let new_log = (only.is_none() || last_log.as_ref() != Some(&snapshot.drain_log))
                    .then_some(snapshot.drain_log.as_slice());
                let r = tokio::runtime::Handle::current().block_on(etcd.publish(
                    &fence,
                    &snapshot,
                    new_log,
                    new_routing,
                    id,
                    computed_ms,
                    &encoded,
                    only,
                ));
                *written = r.as_ref().ok().map(|_| id);
                *last_routing = r.as_ref().ok().map(|_| routing.clone());
                *last_log = r.as_ref().ok().map(|_| snapshot.drain_log.clone());
                let n = r?;
                self.metrics.etcd_site_writes.inc_by(n as u64);
                sites_written = Some(n);
            }
            None => self.store.save(&snapshot)?,
        }
        self.metrics.table_version.set(id.version.0 as i64);
        let new = Arc::new(Published {
            id,
            table: Some(c.table),
            updates,
            encoded,
            built,
        });
        // Counted before the agents can see it: whoever has the table finds it counted.
        self.metrics.tables_published.with_label_values(&[cause]).inc();
        let old = self.published.send_replace(Some(Arc::clone(&new)));
        let took = publishing.elapsed();
        self.metrics.publish_seconds.observe(took.as_secs_f64());
        // Agents have the table; what it moved is recorded after, off their path.
        let (primary, backup) = match old.as_deref() {
            Some(old) => {
                let (p, b) = self.record_changes(old, &new);
                (Some(p), Some(b))
            }
            None => (None, None),
        };
        info!(
            epoch = id.epoch.0,
            version = id.version.0,
            cause,
            publish_ms = took.as_millis() as u64,
            sites_built = sites_built,
            primary_changes = primary,
            backup_only_changes = backup,
            etcd_sites_written = sites_written,
            "route table published"
        );
        self.refresh_agent_gauges();
        Ok(true)
    }
}

/// A running controller.
pub struct ControllerHandle {
    /// The gRPC address.
    pub grpc_addr: SocketAddr,
    /// The HTTP address.
    pub http_addr: SocketAddr,
    /// Shared state (tests read it).
    pub shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl ControllerHandle {
    /// Stops at once, like a crash: no resignation, so in a replicated setup the others wait
    /// for the lease to expire (the lab's `controller_kill`).
    pub async fn kill(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.cancel.cancel();
    }

    /// Applies a new configuration without a restart (see [`Shared::reload`]).
    pub fn reload(&self, cfg: ControllerConfig) -> Result<Reload, ControllerError> {
        self.shared.reload(cfg)
    }

    /// Stops serving and waits for every task.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        // Streams end on cancellation; give the server a bounded grace period to drain.
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
            warn!("shutdown grace period over; aborting what is left");
            self.tasks.shutdown().await;
        }
    }
}

/// Starts a controller.
pub async fn start(cfg: ControllerConfig) -> Result<ControllerHandle, ControllerError> {
    let inventory = cfg.validate()?;
    proto::auth::install_crypto_provider();
    let auth = Auth::new(cfg.tls.is_some(), &cfg.operator_tokens)?;
    if auth.is_open() {
        warn!(
            "no TLS and no operator tokens: anyone who reaches the gRPC port can report, watch, drain and undrain"
        );
    } else if cfg.tls.is_none() {
        warn!(
            "no TLS: probers and agents are not authenticated, and operator tokens cross the network in clear"
        );
    }
    let tls = match &cfg.tls {
        Some(files) => Some(std::sync::RwLock::new(Arc::new(
            files
                .server()
                .map_err(|e| ControllerError::Config(format!("tls: {e}")))?,
        ))),
        None => None,
    };
    let store: Arc<dyn Store> = Arc::new(MemoryStore::open(cfg.store.snapshot.clone())?);
    let etcd = match cfg.store.kind.as_str() {
        "etcd" => Some(Etcd::connect(&cfg.store).await?),
        _ => None,
    };
    // A replica starts as a follower; the embedded store's controller leads from the start.
    let snapshot = store.load()?;
    let core = Core::new(cfg.clone(), inventory, &snapshot)?;
    let metrics = Metrics::new();
    let journal = match &cfg.store.journal {
        Some(path) => {
            let (mut journal, loaded) = Journal::open(cfg.journal_rows, path)?;
            if let Some(e) = journal.take_file_error() {
                metrics.journal_file_errors.with_label_values(&["write"]).inc();
                warn!(error = %e, "route changes kept in memory only; the next table rewrites the file");
            }
            info!(
                file = %path.display(),
                rows = loaded.rows,
                evicted = loaded.evicted,
                "route-change journal read back"
            );
            if loaded.unreadable > 0 {
                metrics
                    .journal_file_errors
                    .with_label_values(&["unreadable"])
                    .inc_by(loaded.unreadable as u64);
                warn!(
                    file = %path.display(),
                    lines = loaded.unreadable,
                    "route-change journal: lines that are not rows were dropped"
                );
            }
            journal
        }
        None => Journal::new(cfg.journal_rows),
    };
    let (published, _) = watch::channel(None);
    let (leadership, _) = watch::channel(Leadership::default());
    let cancel = CancellationToken::new();
    let shared = Arc::new(Shared {
        core: Mutex::new(core),
        store,
        published,
        recompute: Notify::new(),
        agents: Mutex::new(HashMap::new()),
        metrics,
        name: cfg.name.clone(),
        resync: Duration::from_millis(cfg.resync_ms),
        cancel: cancel.clone(),
        auth,
        leadership,
        etcd: etcd.clone(),
        warmup: Duration::from_millis(cfg.store.leader_warmup_ms),
        compact_every: (cfg.store.etcd_compact_s > 0).then(|| Duration::from_secs(cfg.store.etcd_compact_s)),
        etcd_written: Mutex::new(None),
        etcd_routing: Mutex::new(None),
        etcd_drain_log: Mutex::new(None),
        served_costs: Mutex::new(Vec::new()),
        publishing: Mutex::new(()),
        journal: Mutex::new(journal),
        config_drift: Mutex::new(Vec::new()),
        tls,
    });
    shared.metrics.config_matches_leader.set(1);

    // The etcd client's files: their expiry now, and a new connection when they are replaced.
    crate::ha::observe_etcd_files(&cfg.store, &shared.metrics.tls);
    let mut tasks = JoinSet::new();
    if let Some(etcd) = etcd.clone() {
        let (metrics, stop) = (shared.metrics.tls.clone(), cancel.clone());
        tasks.spawn(async move {
            tokio::select! {
                () = crate::ha::watch_files(etcd, metrics) => {}
                () = stop.cancelled() => {}
            }
        });
    }
    if let Some(files) = cfg.tls.clone() {
        shared.metrics.tls.observe(&files);
        let (s, stop) = (shared.clone(), cancel.clone());
        tasks.spawn(async move {
            let metrics = s.metrics.tls.clone();
            let load = || s.load_tls(&files);
            tokio::select! {
                () = ops::tls::watch(files.clone(), metrics, load) => {}
                () = stop.cancelled() => {}
            }
        });
    }
    let grpc = tokio::net::TcpListener::bind(cfg.grpc_listen)
        .await
        .map_err(|e| ControllerError::io("bind gRPC", e))?;
    let grpc_addr = grpc
        .local_addr()
        .map_err(|e| ControllerError::io("gRPC address", e))?;
    let url = cfg.advertise_url(grpc_addr);
    match etcd {
        Some(etcd) => {
            let ttl = Duration::from_secs(cfg.store.lease_ttl_s);
            tasks.spawn(crate::ha::campaign(
                shared.clone(),
                etcd.clone(),
                ttl,
                url,
                cancel.clone(),
            ));
            tasks.spawn(crate::ha::follow(shared.clone(), etcd, cancel.clone()));
        }
        None => {
            shared
                .leadership
                .send_replace(Leadership::solo(snapshot.epoch.max(1), url));
            shared.metrics.leader.set(1);
            let s = shared.clone();
            tokio::task::spawn_blocking(move || s.compute_and_publish())
                .await
                .map_err(|e| ControllerError::Store(format!("first computation: {e}")))??;
        }
    }
    let http = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|e| ControllerError::io("bind HTTP", e))?;
    let http_addr = http
        .local_addr()
        .map_err(|e| ControllerError::io("HTTP address", e))?;

    let svc = crate::services::Services(shared.clone());
    let stop = cancel.clone();
    let mut server =
        tonic::transport::Server::builder().http2_keepalive_interval(Some(Duration::from_secs(10)));
    let gate = shared.clone();
    let admin =
        pb::admin_server::AdminServer::with_interceptor(svc.clone(), move |mut req: tonic::Request<()>| {
            let caller = gate
                .auth
                .require(req.extensions(), req.metadata(), Role::Operator)
                .inspect_err(|_| gate.metrics.auth_refused.with_label_values(&["operator"]).inc())?;
            req.extensions_mut().insert(caller);
            Ok(req)
        });
    let router = server
        .add_service(pb::probe_ingest_server::ProbeIngestServer::new(svc.clone()))
        .add_service(crate::watch::WatchServer::new(svc))
        .add_service(admin);
    let stop = stop.cancelled_owned();
    if shared.tls.is_some() {
        let incoming = tls_incoming(grpc, shared.clone(), cancel.clone(), &mut tasks);
        tasks.spawn(serve_grpc(router, incoming, stop));
    } else {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        tasks.spawn(serve_grpc(router, incoming, stop));
    }
    tasks.spawn(crate::http::serve(http, shared.clone(), cancel.clone()));
    tasks.spawn(compute_loop(
        shared.clone(),
        Duration::from_millis(cfg.tick_ms),
        cancel.clone(),
    ));
    info!(name = %cfg.name, grpc = %grpc_addr, http = %http_addr, "controller started");
    Ok(ControllerHandle {
        grpc_addr,
        http_addr,
        shared,
        cancel,
        tasks,
    })
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The gRPC listener's connections over TLS, each accepted with the configuration in force
/// at its handshake (a reload swaps it: rotated certificates serve the next connections,
/// and those already up go on). Each handshake runs on its own task, so a slow or silent
/// client holds up no other.
/// Whether two updates of a site route every destination the same way (same primary and
/// backup paths) under the same drains and inventory, whatever their costs and tables.
/// The `event` label of `axon_controller_auto_drain_events_total`.
fn auto_event_label(e: &AutoEvent) -> &'static str {
    match e {
        AutoEvent::Judged(s) => s.verdict.label(),
        AutoEvent::Recovered(_) => "recovered",
        AutoEvent::Undrained(_) => "undrained",
    }
}

/// One line per change in the automatic drain policy's view: a site turning sick is worth a
/// warning whatever is done about it.
fn log_auto_event(e: &AutoEvent, mode: topology::AutoMode) {
    match e {
        AutoEvent::Judged(s) => {
            let (site, peers, bad) = (&s.site, s.health.peers, s.health.bad_peers);
            match &s.verdict {
                Verdict::Off => {
                    warn!(%site, peers, bad_peers = bad, ?mode, "site sick: most of its links are down or degraded")
                }
                Verdict::Recommended => {
                    warn!(%site, peers, bad_peers = bad, "site sick: drain recommended (auto_drain.mode = recommend)")
                }
                Verdict::Held { rule, detail } => {
                    warn!(%site, peers, bad_peers = bad, %rule, %detail, "site sick: automatic drain held back")
                }
                Verdict::Drained { automatic: true } => {
                    warn!(%site, peers, bad_peers = bad, "site sick: drained automatically")
                }
                Verdict::Drained { automatic: false } => {
                    info!(%site, peers, bad_peers = bad, "site sick, already drained by an operator")
                }
            }
        }
        AutoEvent::Recovered(site) => info!(%site, "site no longer sick"),
        AutoEvent::Undrained(site) => info!(%site, "automatic drain lifted: the site stayed healthy"),
    }
}

/// Whether site `a`'s rows in `next` say what the update it holds says: the same primaries,
/// backups and protection as in `prev` (the table its paths come from), and primary costs
/// within the refresh margins of `served` (the costs the update carries; see
/// [`topology::RefreshConfig`]).
fn rows_stand(
    prev: &topology::Routes,
    next: &topology::Routes,
    a: usize,
    served: &[f32],
    refresh: &topology::RefreshConfig,
) -> bool {
    let n = next.len();
    prev.len() == n
        && (0..n).all(|b| {
            let (x, y) = (prev.get(a, b), next.get(a, b));
            x.primary == y.primary
                && x.backup == y.backup
                && x.backup_disjoint == y.backup_disjoint
                && !refresh.drifted(f64::from(served[b]), f64::from(y.primary_cost))
        })
}

/// Serves gRPC on the connections `incoming` yields (plaintext, or already through TLS)
/// until `stop`.
async fn serve_grpc<I, IO, IE>(
    router: tonic::transport::server::Router,
    incoming: I,
    stop: tokio_util::sync::WaitForCancellationFutureOwned,
) where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
        warn!(error = %e, "gRPC server stopped");
    }
}

fn tls_incoming(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tasks.spawn(async move {
        let mut handshakes = JoinSet::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
                accepted = listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors, most likely: give the others time to close.
                            warn!(error = %e, "gRPC accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let Some(cfg) = shared.tls_config() else { continue };
                    let tx = tx.clone();
                    handshakes.spawn(async move {
                        let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp);
                        match tokio::time::timeout(HANDSHAKE, accept).await {
                            Ok(Ok(stream)) => {
                                let _ = tx.send(Ok(stream)).await;
                            }
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
        handshakes.shutdown().await;
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn compute_loop(shared: Arc<Shared>, tick: Duration, cancel: CancellationToken) {
    let mut timer = tokio::time::interval(tick);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Computations asked for between ticks (a liveness event, a loss estimate that moved at
    // once) run at once, but no sooner than this after the one before: a stream of such
    // events must not keep a core computing back to back on a large mesh.
    let gap = tick / 10;
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = timer.tick() => {}
            _ = shared.recompute.notified() => {
                if let Some(at) = last {
                    tokio::time::sleep_until(at + gap).await;
                }
            }
        }
        last = Some(tokio::time::Instant::now());
        // The computation is CPU work: keep it off the runtime's I/O threads.
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || s.compute_and_publish()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "computation not published"),
            Err(e) => warn!(error = %e, "computation task failed"),
        }
    }
}
