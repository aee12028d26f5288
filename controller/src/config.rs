//! The controller's configuration: one TOML file, every key documented with its default.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use topology::{AutoDrainConfig, EngineConfig, GuardrailConfig, Inventory, LinkStateConfig, Role, Site};

use crate::error::ControllerError;

/// One site of the inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Unique site id (`aws-use1`).
    pub id: String,
    /// Region (`us-east`).
    pub region: String,
    /// Provider (`aws`, `gcp`, `metal`, …). Default `metal`.
    #[serde(default = "default_provider")]
    pub provider: String,
    /// Latitude, degrees.
    #[serde(default)]
    pub lat: f64,
    /// Longitude, degrees.
    #[serde(default)]
    pub lon: f64,
    /// Concurrent sessions the site carries. Default 1000.
    #[serde(default = "default_capacity")]
    pub capacity: u32,
    /// `active` or `shadow`. Default `active`.
    #[serde(default)]
    pub role: Role,
}

fn default_provider() -> String {
    "metal".into()
}

fn default_capacity() -> u32 {
    1_000
}

/// Where state that must survive a restart lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `memory` (embedded: one controller, optionally a snapshot file) or `etcd` (several
    /// replicas, one leader elected through an etcd lease; drains, the version counter and
    /// published tables live in etcd). Default `memory`.
    pub kind: String,
    /// Snapshot file for drains and the version counter (`memory` only); none = nothing
    /// survives a restart. Default none.
    pub snapshot: Option<PathBuf>,
    /// File the route-change journal (`axonctl changes`) is kept in, so that a restarted
    /// replica still has the history; with either store, and one file per replica (it is
    /// locked while the replica runs). It holds at most twice `journal_rows` rows, about
    /// 400 bytes each. Default none: the journal lives in memory only.
    pub journal: Option<PathBuf>,
    /// etcd client URLs (`http://127.0.0.1:2379`), for `kind = "etcd"`. Default none.
    pub etcd_endpoints: Vec<String>,
    /// Every key Axon writes starts with this prefix: one etcd can hold several meshes.
    /// Default `/axon`.
    pub etcd_prefix: String,
    /// Leadership lease TTL, s: a leader that stops renewing it (crashed, cut off) is replaced
    /// within about this long. Default 3.
    pub lease_ttl_s: u64,
    /// How long a new leader gathers probe reports before it publishes its first table, ms
    /// (until then agents keep the previous leader's). Default 3000.
    pub leader_warmup_ms: u64,
    /// Every this many seconds the leader compacts etcd's history up to the revision it saw
    /// one period before: every table rewrites each site's key, and an etcd whose history is
    /// never compacted fills its space quota and then refuses every write (no table could be
    /// published). Compaction covers the whole etcd, as Kubernetes' API server does; set 0
    /// when something else sharing the etcd needs older revisions, and compact there (etcd's
    /// `--auto-compaction-retention`). Default 300.
    pub etcd_compact_s: u64,
    /// The URL probers and agents use to reach this replica, handed out as the leader's
    /// address by followers. Default `http://` (or `https://` with TLS) + `grpc_listen`.
    pub advertise_url: Option<String>,
    /// TLS to etcd, for `https://` endpoints (see [`EtcdTls`]). Default none: plaintext
    /// `http://` endpoints, for an etcd on a trusted network only.
    pub etcd_tls: Option<EtcdTls>,
    /// A user of etcd's own authentication (`etcdctl auth enable`), with read and write on
    /// `etcd_prefix`; its password is read from `etcd_password_file` (kept out of this file)
    /// at start and when the file is replaced. Default none.
    pub etcd_user: Option<String>,
    /// The file holding `etcd_user`'s password (a trailing newline is ignored). Default none.
    pub etcd_password_file: Option<PathBuf>,
    /// How often the etcd client's files (`etcd_tls`'s CA, certificate and key, and
    /// `etcd_password_file`) are read again to see whether they were replaced, s. New
    /// contents that stayed the same for one more check are dialled with; once a read through
    /// them succeeds, the new connection replaces the old (a leader keeps its lease, and
    /// leads on), so a renewed certificate or a rotated password needs no restart. Contents
    /// that do not work leave the connection in force, and are counted as refused. 0 reads
    /// them only at start. Default 60.
    pub etcd_files_recheck_s: u64,
}

/// TLS between a controller replica and etcd: the files are read when the replica starts, and
/// again when they are replaced (see [`StoreConfig::etcd_files_recheck_s`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    /// CA certificates (PEM) that etcd's server certificates are verified against.
    pub ca: PathBuf,
    /// This replica's client certificate (PEM), for an etcd that requires one
    /// (`--client-cert-auth`). Default none.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM). Default none; set with `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: "memory".into(),
            snapshot: None,
            journal: None,
            etcd_endpoints: Vec::new(),
            etcd_prefix: "/axon".into(),
            lease_ttl_s: 3,
            leader_warmup_ms: 3_000,
            etcd_compact_s: 300,
            advertise_url: None,
            etcd_tls: None,
            etcd_user: None,
            etcd_password_file: None,
            etcd_files_recheck_s: 60,
        }
    }
}

/// The controller's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControllerConfig {
    /// A name for this controller in logs and `axonctl status`. Default `controller`.
    pub name: String,
    /// gRPC address (probe ingest, agent watch, admin). Default `127.0.0.1:7500`.
    pub grpc_listen: SocketAddr,
    /// HTTP address for `/metrics`, `/healthz`, `/readyz`. Default `127.0.0.1:9500`.
    pub http_listen: SocketAddr,
    /// Route computation period, ms. A liveness event, or a window that moves a link's loss
    /// estimate at once (a change found or confirmed), also triggers one, as soon as a tenth
    /// of the period has passed since the last. Default 1000.
    pub tick_ms: u64,
    /// Every agent gets its site's table again this often even without a change, ms.
    /// Default 30000.
    pub resync_ms: u64,
    /// Windows stamped further than this in the future are refused, ms. Default 5000.
    pub max_future_ms: u64,
    /// Primary-path changes the route-change journal keeps (`axonctl changes`), oldest
    /// evicted first; about 200 bytes each. 0 turns the journal off. Default 10000.
    pub journal_rows: usize,
    /// Drain actions the drain log keeps (`axonctl drains --history`): drains, undrains and
    /// refused drains, operator and automatic, oldest evicted first. It is stored with the
    /// drains (snapshot file or etcd), about 250 bytes each. Default 200.
    pub drain_log_rows: usize,
    /// Link cost, path search and hysteresis.
    pub engine: EngineConfig,
    /// Link smoothing and health thresholds.
    pub links: LinkStateConfig,
    /// Drain guardrails.
    pub guardrails: GuardrailConfig,
    /// The automatic drain policy: a site whose links to most of its peers are down or
    /// degraded at once is judged sick; `recommend` (the default) says so in `axonctl
    /// status`, the `axon_site_sick` gauge and the `AxonSiteSick` alert, `enforce` drains it
    /// through the guardrails (one drain per `cooldown_ms`, undone after `undrain_after_ms`
    /// healthy), `off` judges nothing.
    pub auto_drain: AutoDrainConfig,
    /// State that survives restarts.
    pub store: StoreConfig,
    /// TLS for every gRPC connection, with client certificates verified against `ca` (see
    /// `controller::auth` for what each role may do). Default none: plaintext and
    /// unauthenticated, for development only.
    pub tls: Option<proto::auth::TlsFiles>,
    /// Bearer tokens that grant the operator role on the admin API (alongside operator
    /// certificates). Default none.
    pub operator_tokens: Vec<crate::auth::OperatorToken>,
    /// The site inventory. Default empty (required).
    pub sites: Vec<SiteConfig>,
}

/// The sections of a configuration that decide routes, drains and their timing, by name:
/// what the replicas of one mesh must agree on. The leader's decide the mesh's routes, and
/// the replica that takes over decides with its own, so a difference shows up as routes that
/// move on a change of leader.
pub const ROUTING_SECTIONS: [&str; 7] = [
    "engine",
    "links",
    "guardrails",
    "auto_drain",
    "max_future_ms",
    "tick_ms",
    "sites",
];

impl ControllerConfig {
    /// The [`ROUTING_SECTIONS`] of this configuration, as one JSON object (what the leader
    /// writes to etcd for the followers to compare with their own).
    pub fn routing_sections(&self) -> serde_json::Value {
        let all = serde_json::to_value(self).unwrap_or_default();
        ROUTING_SECTIONS
            .iter()
            .map(|k| (k.to_string(), all.get(k).cloned().unwrap_or_default()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// The [`ROUTING_SECTIONS`] in which this configuration differs from `leader`'s (as
    /// [`ControllerConfig::routing_sections`] gave it): empty when they agree.
    pub fn differs_from(&self, leader: &serde_json::Value) -> Vec<String> {
        let mine = self.routing_sections();
        ROUTING_SECTIONS
            .iter()
            .filter(|k| mine.get(**k) != leader.get(**k))
            .map(|k| k.to_string())
            .collect()
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            name: "controller".into(),
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 7500)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9500)),
            tick_ms: 1_000,
            resync_ms: 30_000,
            max_future_ms: 5_000,
            journal_rows: 10_000,
            drain_log_rows: 200,
            engine: EngineConfig::default(),
            links: LinkStateConfig::default(),
            guardrails: GuardrailConfig::default(),
            auto_drain: AutoDrainConfig::default(),
            store: StoreConfig::default(),
            tls: None,
            operator_tokens: Vec::new(),
            sites: Vec::new(),
        }
    }
}

/// `--config`, `--print-config` and `--check-config`, as every daemon has them.
impl ops::DaemonConfig for ControllerConfig {
    fn check(&self) -> Result<(), String> {
        self.validate().map(drop).map_err(|e| e.to_string())
    }
}

impl ControllerConfig {
    /// The URL other processes reach this replica at (see [`StoreConfig::advertise_url`]).
    pub fn advertise_url(&self, grpc: SocketAddr) -> String {
        self.store.advertise_url.clone().unwrap_or_else(|| {
            let scheme = if self.tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{grpc}")
        })
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ControllerError> {
        <Self as ops::DaemonConfig>::parse_toml(text).map_err(ControllerError::Config)
    }

    /// The effective configuration as TOML (for `--print-config`).
    pub fn to_toml(&self) -> String {
        ops::DaemonConfig::render_toml(self)
    }

    /// Checks every value and builds the inventory.
    pub fn validate(&self) -> Result<Inventory, ControllerError> {
        let bad = |m: String| Err(ControllerError::Config(m));
        if self.sites.is_empty() {
            return bad("sites: the inventory is empty".into());
        }
        if !(10..=600_000).contains(&self.tick_ms) {
            return bad(format!("tick_ms {} is outside 10..=600000", self.tick_ms));
        }
        if self.resync_ms < self.tick_ms {
            return bad("resync_ms must be ≥ tick_ms".into());
        }
        if self.journal_rows > 1_000_000 {
            return bad(format!("journal_rows {} is over 1000000", self.journal_rows));
        }
        if self.drain_log_rows > 10_000 {
            return bad(format!(
                "drain_log_rows {} is over 10000 (the log is written with every table)",
                self.drain_log_rows
            ));
        }
        match self.store.kind.as_str() {
            "memory" => {}
            "etcd" => {
                if self.store.etcd_endpoints.is_empty() {
                    return bad("store.etcd_endpoints: `etcd` needs at least one endpoint".into());
                }
                if !(1..=60).contains(&self.store.lease_ttl_s) {
                    return bad(format!(
                        "store.lease_ttl_s {} is outside 1..=60",
                        self.store.lease_ttl_s
                    ));
                }
                if !self.store.etcd_prefix.starts_with('/') || self.store.etcd_prefix.ends_with('/') {
                    return bad(format!(
                        "store.etcd_prefix `{}` must start with `/` and not end with one",
                        self.store.etcd_prefix
                    ));
                }
                if self.store.snapshot.is_some() {
                    return bad("store.snapshot is for `memory`; etcd keeps the state".into());
                }
                let scheme = if self.store.etcd_tls.is_some() {
                    "https://"
                } else {
                    "http://"
                };
                if let Some(e) = self.store.etcd_endpoints.iter().find(|e| !e.starts_with(scheme)) {
                    return bad(format!(
                        "store.etcd_endpoints: `{e}` must start with `{scheme}`{}",
                        if self.store.etcd_tls.is_some() {
                            " (store.etcd_tls is set)"
                        } else {
                            " (set store.etcd_tls for https)"
                        }
                    ));
                }
                if let Some(t) = &self.store.etcd_tls
                    && t.cert.is_some() != t.key.is_some()
                {
                    return bad("store.etcd_tls: `cert` and `key` go together".into());
                }
                if self.store.etcd_user.is_some() != self.store.etcd_password_file.is_some() {
                    return bad("store.etcd_user and store.etcd_password_file go together".into());
                }
            }
            other => return bad(format!("store.kind `{other}`: `memory` or `etcd`")),
        }
        if self.store.journal.is_some() && self.store.journal == self.store.snapshot {
            return bad("store.journal and store.snapshot must be two files".into());
        }
        if self.store.etcd_compact_s > 86_400 {
            return bad(format!(
                "store.etcd_compact_s {} is above 86400 (a day)",
                self.store.etcd_compact_s
            ));
        }
        if self.store.leader_warmup_ms > 600_000 {
            return bad("store.leader_warmup_ms is above 600000".into());
        }
        self.engine
            .validate()
            .map_err(|e| ControllerError::Config(format!("engine: {e}")))?;
        self.auto_drain
            .validate()
            .map_err(|e| ControllerError::Config(format!("auto_drain: {e}")))?;
        crate::auth::Auth::new(self.tls.is_some(), &self.operator_tokens)?;
        let mut sites = Vec::with_capacity(self.sites.len());
        for s in &self.sites {
            if s.id.ends_with(proto::auth::RESERVED_SUFFIX) {
                return bad(format!(
                    "site {}: ids ending in `{}` are reserved for certificate roles",
                    s.id,
                    proto::auth::RESERVED_SUFFIX
                ));
            }
            let mut site = Site::new(&s.id, &s.region, &s.provider, s.lat, s.lon, s.capacity)
                .map_err(|e| ControllerError::Config(format!("site {}: {e}", s.id)))?;
            site.role = s.role;
            sites.push(site);
        }
        Inventory::new(sites).map_err(|e| ControllerError::Config(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_compare_the_sections_that_decide_routes_and_nothing_else() {
        let leader = ControllerConfig {
            sites: vec![SiteConfig {
                id: "a".into(),
                region: "r".into(),
                provider: default_provider(),
                lat: 0.0,
                lon: 0.0,
                capacity: default_capacity(),
                role: Role::Active,
            }],
            ..Default::default()
        };
        // What the leader writes to etcd, read back as a follower reads it.
        let written = serde_json::to_vec(&leader.routing_sections()).unwrap();
        let read: serde_json::Value = serde_json::from_slice(&written).unwrap();
        assert!(leader.differs_from(&read).is_empty());
        // Its own name, addresses and journal are a replica's business.
        let mut follower = leader.clone();
        follower.name = "c2".into();
        follower.grpc_listen = "127.0.0.1:7600".parse().unwrap();
        follower.journal_rows = 5;
        assert!(follower.differs_from(&read).is_empty());
        // Weights, timers and the inventory are the mesh's.
        follower.engine.hysteresis.switch_after += 1;
        follower.tick_ms *= 2;
        follower.sites[0].capacity += 1;
        assert_eq!(follower.differs_from(&read), ["engine", "tick_ms", "sites"]);
        // A leader that wrote nothing readable: every section differs.
        assert_eq!(
            leader.differs_from(&serde_json::Value::Null).len(),
            ROUTING_SECTIONS.len()
        );
    }
}
