//! Every metric the controller exports. Labels are bounded: `reason` from a fixed set,
//! `site` from the inventory.

use ops::register;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The controller's metrics and the registry that exports them.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Reports taken (windows and liveness events).
    pub reports: IntCounterVec,
    /// Reports refused, by reason.
    pub rejected: IntCounterVec,
    /// Route computations run.
    pub computations: IntCounter,
    /// Time of one computation, seconds.
    pub compute_seconds: Histogram,
    /// The version of the table in force.
    pub table_version: IntGauge,
    /// 1 while this replica leads (always 1 on the embedded store).
    pub leader: IntGauge,
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
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        Metrics {
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
            table_version: register(
                r,
                IntGauge::new("axon_route_table_version", "Version of the table in force."),
            ),
            leader: register(
                r,
                IntGauge::new("axon_controller_leader", "1 while this replica leads."),
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
            registry,
        }
    }

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
