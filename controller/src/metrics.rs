//! Every metric the controller exports. Labels are bounded: `reason` from a fixed set,
//! `site` from the inventory.

use ops::register;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every `event` of `axon_controller_auto_drain_events_total`, exported from the start.
pub const AUTO_DRAIN_EVENTS: [&str; 7] = [
    "recommended",
    "held",
    "drained",
    "drained_by_operator",
    "off",
    "recovered",
    "undrained",
];

/// The controller's metrics and the registry that exports them.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Reports taken (windows and liveness events).
    pub reports: IntCounterVec,
    /// Reports refused, by reason.
    pub rejected: IntCounterVec,
    /// Evidence bursts asked of probers: acks naming a peer whose rise in loss awaits
    /// confirmation (one per window of such a link).
    pub evidence_wanted: IntCounter,
    /// Route computations run.
    pub computations: IntCounter,
    /// Time of one computation, seconds.
    pub compute_seconds: Histogram,
    /// Time from a computation's end to its table in force (the sites' updates built, the
    /// table stored, the agents' streams told), seconds.
    pub publish_seconds: Histogram,
    /// The version of the table in force.
    pub table_version: IntGauge,
    /// 1 while this replica leads (always 1 on the embedded store).
    pub leader: IntGauge,
    /// 1 while this replica's routing configuration is the leader's (always 1 on the leader),
    /// 0 while it differs: the routes would move if this replica took over.
    pub config_matches_leader: IntGauge,
    /// Agents with an open watch stream.
    pub agents_connected: IntGauge,
    /// Agents whose last ack is the table in force.
    pub agents_latest: IntGauge,
    /// NACKs received.
    pub nacks: IntCounter,
    /// Route updates sent to agents.
    pub updates_sent: IntCounter,
    /// Agents connected, by site.
    pub site_nodes: IntGaugeVec,
    /// Sessions the connected nodes of a site carry, as their media servers report them.
    pub site_sessions: IntGaugeVec,
    /// Mean load of a site's connected nodes that report it, 0..1.
    pub site_load: GaugeVec,
    /// Calls refused for want of a certificate, token or role, by the role they needed.
    pub auth_refused: IntCounterVec,
    /// Directed links by health at the last computation (leader only).
    pub links: IntGaugeVec,
    /// Ordered pairs of endpoints by how the table in force routes them (leader only).
    pub route_pairs: IntGaugeVec,
    /// Routed pairs by how their backup is protected (leader only).
    pub route_backups: IntGaugeVec,
    /// Pairs that switched path, by reason, over the tables this replica published.
    pub route_switches: IntCounterVec,
    /// 1 for a drained site (operator or automatic drain, its region's included), else 0
    /// (leader only).
    pub site_drained: IntGaugeVec,
    /// 1 while the automatic drain policy judges a site sick: most of its peers' links to or
    /// from it down or degraded at once (leader only).
    pub site_sick: IntGaugeVec,
    /// Changes in the automatic drain policy's view, by event: a site judged sick with its
    /// verdict (`recommended`, `held`, `drained`, `drained_by_operator`, `off`), `recovered`,
    /// or `undrained` (the policy lifted its drain).
    pub auto_drain_events: IntCounterVec,
    /// Configuration reloads (`SIGHUP`), by result: applied or refused.
    pub config_reloads: IntCounterVec,
    /// Trouble with the journal's file (`store.journal`), by kind: `write` (a recording
    /// that did not reach the file; the rows stay in memory) or `unreadable` (lines dropped
    /// when the file was read at start).
    pub journal_file_errors: IntCounterVec,
    /// The TLS files' expiry and the replacements found by the periodic check.
    pub tls: ops::tls::TlsMetrics,
    /// Compactions of etcd's history by the leader (`store.etcd_compact_s`), by result:
    /// done or failed.
    pub etcd_compactions: IntCounterVec,
    /// Sites' keys the leader wrote to etcd: only the sites a table moved, after the first
    /// table of a leadership.
    pub etcd_site_writes: IntCounter,
    /// Tables published, by cause: `paths` (a path changed, or a drain, a reload or a new
    /// leadership asked for a new version) or `costs` (only costs drifted past
    /// `engine.refresh`).
    pub tables_published: IntCounterVec,
    /// Tables computed but not published, by reason: `store` (the snapshot or etcd refused
    /// the write; agents keep the table before), `fenced` (this replica no longer leads),
    /// `other`.
    pub publish_failures: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        ops::register_process(&registry, env!("CARGO_PKG_VERSION"));
        let r = &registry;
        let m = Metrics {
            reports: register(
                r,
                IntCounterVec::new(
                    Opts::new("axon_ingest_reports_total", "Reports taken."),
                    &["kind"],
                ),
            ),
            rejected: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_ingest_rejected_total",
                        "Reports refused at ingest, by reason.",
                    ),
                    &["reason"],
                ),
            ),
            evidence_wanted: register(
                r,
                IntCounter::new(
                    "axon_ingest_evidence_wanted_total",
                    "Acks asking a prober for an evidence burst to a peer whose rise in loss awaits confirmation.",
                ),
            ),
            computations: register(
                r,
                IntCounter::new("axon_route_computations_total", "Route computations run."),
            ),
            compute_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("axon_route_compute_seconds", "Time of one route computation.")
                        .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
                ),
            ),
            publish_seconds: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "axon_route_publish_seconds",
                        "Time from a computation's end to its table in force: updates built, table stored, streams told.",
                    )
                    .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
                ),
            ),
            table_version: register(
                r,
                IntGauge::new("axon_route_table_version", "Version of the table in force."),
            ),
            leader: register(
                r,
                IntGauge::new("axon_controller_leader", "1 while this replica leads."),
            ),
            config_matches_leader: register(
                r,
                IntGauge::new(
                    "axon_controller_config_matches_leader",
                    "1 while this replica's routing configuration (engine, links, guardrails, max_future_ms, tick_ms, sites) is the leader's.",
                ),
            ),
            agents_connected: register(
                r,
                IntGauge::new("axon_agents_connected", "Agents with an open watch stream."),
            ),
            agents_latest: register(
                r,
                IntGauge::new("axon_agents_latest", "Agents that acked the table in force."),
            ),
            nacks: register(
                r,
                IntCounter::new("axon_agent_nacks_total", "Route updates refused by agents."),
            ),
            updates_sent: register(
                r,
                IntCounter::new("axon_route_updates_sent_total", "Route updates sent to agents."),
            ),
            site_nodes: register(
                r,
                IntGaugeVec::new(
                    Opts::new("axon_site_nodes", "Agents with an open watch stream, by site."),
                    &["site"],
                ),
            ),
            site_sessions: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "axon_site_sessions",
                        "Sessions on a site's connected nodes, as their media servers report them.",
                    ),
                    &["site"],
                ),
            ),
            site_load: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "axon_site_load_ratio",
                        "Mean load of a site's connected nodes that report it, 0 to 1.",
                    ),
                    &["site"],
                ),
            ),
            auth_refused: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_auth_refused_total",
                        "Calls refused for want of a certificate, token or role, by the role they needed.",
                    ),
                    &["role"],
                ),
            ),
            links: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "axon_links",
                        "Directed links by health at the last route computation.",
                    ),
                    &["health"],
                ),
            ),
            route_pairs: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "axon_route_pairs",
                        "Ordered pairs of sites by how the table in force routes them.",
                    ),
                    &["path"],
                ),
            ),
            route_backups: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "axon_route_backups",
                        "Routed pairs by backup: disjoint from the primary, partial, or none.",
                    ),
                    &["kind"],
                ),
            ),
            route_switches: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_route_switches_total",
                        "Pairs that switched path in a published table, by reason.",
                    ),
                    &["reason"],
                ),
            ),
            site_drained: register(
                r,
                IntGaugeVec::new(
                    Opts::new("axon_site_drained", "1 while a site is drained."),
                    &["site"],
                ),
            ),
            site_sick: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "axon_site_sick",
                        "1 while the automatic drain policy judges a site sick: most of its peers' links down or degraded at once.",
                    ),
                    &["site"],
                ),
            ),
            auto_drain_events: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_controller_auto_drain_events_total",
                        "Changes in the automatic drain policy's view, by event: a site judged sick with its verdict (recommended, held, drained, drained_by_operator, off), recovered, undrained.",
                    ),
                    &["event"],
                ),
            ),
            config_reloads: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_controller_config_reloads_total",
                        "Configuration reloads (SIGHUP), by result: applied or refused.",
                    ),
                    &["result"],
                ),
            ),
            journal_file_errors: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_controller_journal_file_errors_total",
                        "Route-change journal file trouble, by kind: write (rows kept in memory only) or unreadable (lines dropped at start).",
                    ),
                    &["kind"],
                ),
            ),
            tls: ops::tls::TlsMetrics::register(r),
            etcd_compactions: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_controller_etcd_compactions_total",
                        "Compactions of etcd's history by the leader, by result: done or failed.",
                    ),
                    &["result"],
                ),
            ),
            publish_failures: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_controller_publish_failures_total",
                        "Tables computed but not published, by reason: store (the store refused the write), fenced (no longer the leader), other.",
                    ),
                    &["reason"],
                ),
            ),
            etcd_site_writes: register(
                r,
                IntCounter::new(
                    "axon_controller_etcd_site_writes_total",
                    "Sites' route keys the leader wrote to etcd (only the sites a table moved, after a leadership's first table).",
                ),
            ),
            tables_published: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_controller_tables_published_total",
                        "Route tables published, by cause: paths (a path changed, or a drain, reload or new leadership), costs (only costs drifted past engine.refresh).",
                    ),
                    &["cause"],
                ),
            ),
            registry,
        };
        // Series that exist from the start: an increase() over them sees the first event,
        // and the dashboards read zero rather than nothing.
        for r in crate::core::REJECT_REASONS {
            m.rejected.with_label_values(&[r]);
        }
        for role in ["prober", "agent", "operator"] {
            m.auth_refused.with_label_values(&[role]);
        }
        for kind in ["window", "liveness"] {
            m.reports.with_label_values(&[kind]);
        }
        for r in topology::SwitchReason::LABELS {
            m.route_switches.with_label_values(&[r]);
        }
        for r in ["applied", "refused"] {
            m.config_reloads.with_label_values(&[r]);
        }
        for e in AUTO_DRAIN_EVENTS {
            m.auto_drain_events.with_label_values(&[e]);
        }
        for k in ["write", "unreadable"] {
            m.journal_file_errors.with_label_values(&[k]);
        }
        for r in ["done", "failed"] {
            m.etcd_compactions.with_label_values(&[r]);
        }
        for c in ["paths", "costs"] {
            m.tables_published.with_label_values(&[c]);
        }
        for r in ["store", "fenced", "other"] {
            m.publish_failures.with_label_values(&[r]);
        }
        m
    }

    /// Sets the mesh gauges from a computation: links by health, and each site's drain and
    /// sickness (`sites`: id, drained, sick), every time; the
    /// table's routes, and the pairs it switched, when the computation made a new table
    /// (`table`; an unchanged table counts the same, and counting it is a pass over every pair
    /// under the core's lock).
    pub fn observe_mesh(
        &self,
        links: &topology::HealthCounts,
        table: Option<&topology::TableSummary>,
        sites: &[(String, bool, bool)],
    ) {
        for (health, n) in [
            ("up", links.up),
            ("degraded", links.degraded),
            ("down", links.down),
            ("stale", links.stale),
            ("unmeasured", links.unmeasured),
        ] {
            self.links.with_label_values(&[health]).set(gauge(n));
        }
        for (site, drained, sick) in sites {
            self.site_drained
                .with_label_values(&[site])
                .set(i64::from(*drained));
            self.site_sick.with_label_values(&[site]).set(i64::from(*sick));
        }
        let Some(table) = table else { return };
        for (path, n) in [
            ("direct", table.direct),
            ("one_relay", table.one_relay),
            ("two_relays", table.two_relays),
            ("unreachable", table.unreachable),
        ] {
            self.route_pairs.with_label_values(&[path]).set(gauge(n));
        }
        for (kind, n) in [
            ("disjoint", table.backup_disjoint),
            ("partial", table.backup_partial),
            ("none", table.backup_none),
        ] {
            self.route_backups.with_label_values(&[kind]).set(gauge(n));
        }
        for &(reason, n) in &table.switched {
            self.route_switches.with_label_values(&[reason]).inc_by(n as u64);
        }
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        ops::render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
