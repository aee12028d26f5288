//! Every metric the prober exports, in one place. Labels are bounded: `peer` comes from the
//! configured peer list, `reason` and `state` from fixed sets.

use ops::register;
use prometheus::core::Collector;
use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Every `reason` a datagram or connection is refused for
/// (`axon_probe_datagrams_dropped_total`): the counter exports each from the start, so that
/// a rate over it reads zero rather than nothing, and its first increase is seen.
pub const DROP_REASONS: [&str; 17] = [
    "connection_limit",
    "handshake",
    "no_identity",
    "identity",
    "truncated",
    "oversized",
    "foreign",
    "version",
    "flags",
    "trailing",
    "tls",
    "config",
    "io",
    "unsent",
    "too_old",
    "forged",
    "replayed",
];

/// The prober's metrics and the registry that exports them.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` renders.
    pub registry: Registry,
    /// Round-trip time of every in-time reply, seconds.
    pub rtt: HistogramVec,
    /// Loss ratio of the last closed window.
    pub loss: GaugeVec,
    /// RFC 3550 jitter at the last closed window, seconds.
    pub jitter: GaugeVec,
    /// Probes sent (or due while the connection was down).
    pub sent: IntCounterVec,
    /// Probes lost (timed out, or due while the connection was down).
    pub lost: IntCounterVec,
    /// 1 while liveness says the peer answers and its connection is up.
    pub peer_up: IntGaugeVec,
    /// Liveness changes, by peer and state (`down`/`up`).
    pub liveness_events: IntCounterVec,
    /// Datagrams refused, by reason.
    pub dropped: IntCounterVec,
    /// Evidence bursts started, by peer (see `BurstConfig`).
    pub bursts: IntCounterVec,
    /// Heal bursts started, by peer (counted in `bursts` too; see `BurstConfig::heal_after_losses`).
    pub heal_bursts: IntCounterVec,
    /// Bursts the controller asked for, by peer (counted in `bursts` too; see
    /// `PeerSession::ask_burst`).
    pub asked_bursts: IntCounterVec,
    /// Bursts started as a cooldown ended, for a miss within it, by peer (counted in `bursts`
    /// too; see `PeerSession::deferred_bursts`).
    pub deferred_bursts: IntCounterVec,
    /// Probes counted lost as soon as later ones were echoed past them, before their loss
    /// timeout, by peer (counted in `lost` too; see `SessionConfig::packet_threshold`).
    pub lost_early: IntCounterVec,
    /// Replies whose round trip spanned a stall of this prober's host or the peer's (the
    /// peer's datagram says so, `wire::STALLED`), their RTT kept out of
    /// the window's percentiles and jitter, by peer (counted in `received`' windows too; see
    /// `EchoKind::AcrossStall`).
    pub rtt_across_stall: IntCounterVec,
    /// Link-down verdicts taken back, by peer: the run of misses behind them was in flight
    /// while this prober's host stalled (see `PeerSession::poll`).
    pub downs_held: IntCounterVec,
    /// Evidence bursts not started, by peer and reason: `slots` (other peers held every slot,
    /// see `BurstConfig::max_share`), `host_stall` (the miss followed a stall of this host,
    /// see `BurstSlots`), `lossy` (the link misses too often to burst) or `asked_limit` (the
    /// controller asked for more in a row than `BurstConfig::asked_max`).
    pub bursts_refused: IntCounterVec,
    /// Peers' asks answered at once.
    pub answered: IntCounter,
    /// Datagrams sent at once to carry a backlog of the peers' echoes (see
    /// `session::FLUSH_AT`): at the end of bursts on long links.
    pub echo_flushes: IntCounter,
    /// Connection attempts that failed, by peer.
    pub dial_failures: IntCounterVec,
    /// Reports dropped because the buffer was full while no controller took them.
    pub report_dropped: IntCounter,
    /// Reports waiting in the buffer.
    pub report_buffered: IntGauge,
    /// Reports acknowledged by a controller.
    pub report_acked: IntCounter,
    /// 1 while a report stream to a controller is open.
    pub controller_connected: Gauge,
    /// Time from a probe's scheduled tick to its send, seconds: the prober's own timer error.
    pub send_lateness: Histogram,
    /// `axon_prober_config_reloads_total{result}`: SIGHUP reloads applied or refused.
    pub config_reloads: IntCounterVec,
    /// `axon_prober_peers`: the sites this prober measures now.
    pub peers: IntGauge,
    /// The TLS files' expiry and the replacements found by the periodic check.
    pub tls: ops::tls::TlsMetrics,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        ops::register_process(&registry, env!("CARGO_PKG_VERSION"));
        let r = &registry;
        let rtt_buckets = vec![
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
            0.75, 1.0, 2.0,
        ];
        let m = Metrics {
            rtt: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new("axon_probe_rtt_seconds", "Probe round-trip time.")
                        .buckets(rtt_buckets),
                    &["peer"],
                ),
            ),
            loss: register(
                r,
                GaugeVec::new(
                    Opts::new("axon_probe_loss_ratio", "Loss ratio of the last window."),
                    &["peer"],
                ),
            ),
            jitter: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "axon_probe_jitter_seconds",
                        "RFC 3550 jitter over RTT samples at the last window.",
                    ),
                    &["peer"],
                ),
            ),
            sent: register(
                r,
                IntCounterVec::new(Opts::new("axon_probes_sent_total", "Probes sent."), &["peer"]),
            ),
            lost: register(
                r,
                IntCounterVec::new(Opts::new("axon_probes_lost_total", "Probes lost."), &["peer"]),
            ),
            peer_up: register(
                r,
                IntGaugeVec::new(Opts::new("axon_peer_up", "1 while the peer answers."), &["peer"]),
            ),
            liveness_events: register(
                r,
                IntCounterVec::new(
                    Opts::new("axon_probe_liveness_events_total", "Liveness changes."),
                    &["peer", "state"],
                ),
            ),
            dropped: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_probe_datagrams_dropped_total",
                        "Datagrams refused, by reason.",
                    ),
                    &["reason"],
                ),
            ),
            answered: register(
                r,
                IntCounter::new("axon_probes_answered_total", "Peers' asks answered at once."),
            ),
            echo_flushes: register(
                r,
                IntCounter::new(
                    "axon_probe_echo_flushes_total",
                    "Datagrams sent at once to carry a backlog of the peers' echoes.",
                ),
            ),
            bursts: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_probe_bursts_total",
                        "Evidence bursts started: more probes after a surprising miss.",
                    ),
                    &["peer"],
                ),
            ),
            heal_bursts: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_probe_heal_bursts_total",
                        "Heal bursts started (among the evidence bursts): more probes once a link that missed goes quiet.",
                    ),
                    &["peer"],
                ),
            ),
            asked_bursts: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_probe_asked_bursts_total",
                        "Evidence bursts the controller asked for (among the evidence bursts): a rise in loss it has not yet confirmed.",
                    ),
                    &["peer"],
                ),
            ),
            deferred_bursts: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_probe_deferred_bursts_total",
                        "Evidence bursts started as a burst's cooldown ended, for a miss within it (among the evidence bursts).",
                    ),
                    &["peer"],
                ),
            ),
            lost_early: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_probes_lost_early_total",
                        "Probes counted lost as soon as three later ones were echoed, before their loss timeout (among the lost probes).",
                    ),
                    &["peer"],
                ),
            ),
            rtt_across_stall: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_probe_rtt_across_stall_total",
                        "Replies whose round trip spanned a stall of this prober's host or the peer's: received, their RTT kept out of the percentiles and the jitter.",
                    ),
                    &["peer"],
                ),
            ),
            downs_held: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_probe_downs_held_total",
                        "Link-down verdicts taken back: their misses were in flight while this prober's host stalled.",
                    ),
                    &["peer"],
                ),
            ),
            bursts_refused: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_probe_bursts_refused_total",
                        "Evidence bursts not started: every slot taken, just after a host stall, on a link that misses too often, or asked for too many times in a row.",
                    ),
                    &["peer", "reason"],
                ),
            ),
            dial_failures: register(
                r,
                IntCounterVec::new(
                    Opts::new("axon_probe_dial_failures_total", "Failed connection attempts."),
                    &["peer"],
                ),
            ),
            report_dropped: register(
                r,
                IntCounter::new(
                    "axon_report_dropped_total",
                    "Reports dropped (oldest first) while the buffer was full.",
                ),
            ),
            report_buffered: register(
                r,
                IntGauge::new("axon_report_buffered", "Reports waiting for a controller."),
            ),
            report_acked: register(
                r,
                IntCounter::new("axon_report_acked_total", "Reports acknowledged by a controller."),
            ),
            controller_connected: register(
                r,
                Gauge::new(
                    "axon_report_controller_connected",
                    "1 while a report stream is open.",
                ),
            ),
            send_lateness: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "axon_probe_send_lateness_seconds",
                        "Delay from a probe's tick to its send.",
                    )
                    .buckets(vec![0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05]),
                ),
            ),
            config_reloads: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "axon_prober_config_reloads_total",
                        "Configuration reloads (SIGHUP), by result: applied or refused.",
                    ),
                    &["result"],
                ),
            ),
            peers: register(
                r,
                IntGauge::new("axon_prober_peers", "Peer sites this prober measures."),
            ),
            tls: ops::tls::TlsMetrics::register(r),
            registry,
        };
        for reason in DROP_REASONS {
            m.dropped.with_label_values(&[reason]);
        }
        for result in ["applied", "refused"] {
            m.config_reloads.with_label_values(&[result]);
        }
        m
    }

    /// The body of `/readyz` (see `http`): peers answering out of those measured, and the
    /// report stream's state.
    pub fn readiness(&self, reports: bool) -> String {
        let up: i64 = self
            .peer_up
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_gauge().get_value() as i64)
            .sum();
        let stream = match (reports, self.controller_connected.get() > 0.0) {
            (false, _) => "not configured",
            (true, true) => "open",
            (true, false) => "waiting for a controller",
        };
        format!(
            "ready: {up} of {} peers answer; report stream {stream}\n",
            self.peers.get()
        )
    }

    /// Removes a peer's series, once this prober no longer measures it (a reload removed
    /// it): a gauge left behind would show a link that is no longer watched as up.
    pub fn forget_peer(&self, peer: &str) {
        let p = [peer];
        let _ = self.rtt.remove_label_values(&p);
        let _ = self.loss.remove_label_values(&p);
        let _ = self.jitter.remove_label_values(&p);
        let _ = self.peer_up.remove_label_values(&p);
        for c in [
            &self.sent,
            &self.lost,
            &self.bursts,
            &self.heal_bursts,
            &self.asked_bursts,
            &self.deferred_bursts,
            &self.lost_early,
            &self.rtt_across_stall,
            &self.downs_held,
            &self.dial_failures,
        ] {
            let _ = c.remove_label_values(&p);
        }
        for state in ["down", "up"] {
            let _ = self.liveness_events.remove_label_values(&[peer, state]);
        }
        for (reason, _) in crate::session::BurstsRefused::default().by_reason() {
            let _ = self.bursts_refused.remove_label_values(&[peer, reason]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        ops::render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProberError;
    use crate::session::Refused;

    #[test]
    fn every_drop_label_is_exported_from_the_start() {
        let errors = [
            ProberError::Truncated(1),
            ProberError::Oversized(1),
            ProberError::Foreign,
            ProberError::Version(9),
            ProberError::Flags(1),
            ProberError::Trailing,
            ProberError::Tls(String::new()),
            ProberError::Config(String::new()),
            ProberError::io("x", "y"),
        ];
        let refused = [
            Refused::Unsent,
            Refused::TooOld,
            Refused::Forged,
            Refused::Replayed,
        ];
        let labels = errors
            .iter()
            .map(ProberError::label)
            .chain(refused.map(Refused::label));
        let text = Metrics::new().render();
        for label in labels {
            assert!(DROP_REASONS.contains(&label), "{label} missing from DROP_REASONS");
            let series = format!("axon_probe_datagrams_dropped_total{{reason=\"{label}\"}} 0");
            assert!(text.contains(&series), "{series} not exported");
        }
    }
}
