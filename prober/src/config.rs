//! The prober's configuration: one TOML file, every key documented with its default.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use topology::SiteId;

use crate::error::ProberError;
use crate::liveness::LivenessConfig;
use crate::session::{BurstConfig, SessionConfig};
use crate::tls::TlsFiles;

/// One peer site to probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's site id; its certificate must name it.
    pub site: String,
    /// The peer prober's QUIC address.
    pub addr: SocketAddr,
}

/// Fast liveness tuning (see `liveness.rs` for the reasoning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LivenessSettings {
    /// Miss deadline = factor × RTT p99 + margin. Default 1.5.
    pub deadline_factor: f64,
    /// Default 5 ms.
    pub deadline_margin_ms: u64,
    /// Shortest miss run that declares a link down. Default 3.
    pub min_run: u32,
    /// Longest miss run. Default 12.
    pub max_run: u32,
    /// Allowed false `LinkDown` per link-day under the link's own random loss. Default 0.5.
    pub false_alarms_per_day: f64,
    /// Probes before the measured miss rate is trusted. Default 50.
    pub warmup_probes: u32,
}

impl Default for LivenessSettings {
    fn default() -> Self {
        let d = LivenessConfig::default();
        LivenessSettings {
            deadline_factor: d.deadline_factor,
            deadline_margin_ms: d.deadline_margin.as_millis() as u64,
            min_run: d.min_run,
            max_run: d.max_run,
            false_alarms_per_day: d.false_alarms_per_day,
            warmup_probes: d.warmup_probes,
        }
    }
}

/// Evidence bursts (see [`BurstConfig`] for the reasoning): more probes for a short while
/// after a miss on a link that rarely misses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BurstSettings {
    /// Extra probes per probe interval during a burst; 0 turns bursts off. Default 9.
    pub extra: u32,
    /// Burst length, ms. Default 2000.
    pub duration_ms: u64,
    /// Least time between two bursts' starts, ms. Default 5000.
    pub cooldown_ms: u64,
    /// Most bursts in a row: a burst whose own asks miss is followed at once by the next, up
    /// to this many (1: never). Default 2.
    pub chain: u32,
    /// Only links missing fewer regular probes than this fraction over about the last 2000
    /// (as the rate stood 10 to 20 s before) burst. Default 0.005.
    pub below_miss_rate: f64,
    /// The share of peers that may burst at once (at least two): misses on many peers at once
    /// are this host stalling, not brown-outs. Default 0.25.
    pub max_share: f64,
    /// Heal bursts: a link that lost this many probes within `heal_lookback_ms`, then none
    /// for `heal_quiet_ms`, gets one burst, so that the controller sees a brown-out's end in
    /// seconds; 0 turns them off. Default 5.
    pub heal_after_losses: u32,
    /// Time since the last loss before a heal burst, ms. Default 2000.
    pub heal_quiet_ms: u64,
    /// The span the losses must fall within, ms. Default 30000.
    pub heal_lookback_ms: u64,
    /// Most bursts in a row the controller may ask for on one link, when the loss it found
    /// risen awaits confirmation; 0 ignores its asks. Default 3.
    pub asked_max: u32,
}

impl Default for BurstSettings {
    fn default() -> Self {
        let d = BurstConfig::default();
        BurstSettings {
            extra: d.extra,
            duration_ms: d.duration.as_millis() as u64,
            cooldown_ms: d.cooldown.as_millis() as u64,
            chain: d.chain,
            below_miss_rate: d.below_miss_rate,
            max_share: d.max_share,
            heal_after_losses: d.heal_after_losses,
            heal_quiet_ms: d.heal_quiet.as_millis() as u64,
            heal_lookback_ms: d.heal_lookback.as_millis() as u64,
            asked_max: d.asked_max,
        }
    }
}

/// Where reports go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Controller gRPC endpoints (`http://host:port`), tried in order; empty = do not report
    /// (metrics only). Default empty.
    pub endpoints: Vec<String>,
    /// Reports kept while no controller takes them; the oldest are dropped first (counted by
    /// `axon_report_dropped_total`). Default 100000 (about 30 min of 50 peers).
    pub buffer: usize,
    /// First re-connect delay, ms; doubles up to `backoff_max_ms`. Default 200.
    pub backoff_min_ms: u64,
    /// Default 5000.
    pub backoff_max_ms: u64,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            endpoints: Vec::new(),
            buffer: 100_000,
            backoff_min_ms: 200,
            backoff_max_ms: 5_000,
        }
    }
}

/// The prober's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProberConfig {
    /// This prober's site id. Required.
    pub site: String,
    /// UDP address of the QUIC endpoint (probes in and out). Default `0.0.0.0:7400`.
    pub listen: SocketAddr,
    /// HTTP address for `/metrics` and `/healthz`; none = no HTTP. Default `127.0.0.1:9400`.
    pub metrics_listen: Option<SocketAddr>,
    /// Probes per second per peer = 1000 / this. Default 100 ms (10 Hz).
    pub probe_interval_ms: u64,
    /// Window length, ms. Default 1000.
    pub window_ms: u64,
    /// A probe unanswered this long (or 3 × RTT if longer) is lost, ms. Default 1000.
    pub loss_timeout_ms: u64,
    /// A probe is lost as soon as a datagram sent this many places after it is echoed (see
    /// `SessionConfig::packet_threshold`); 0 waits for the loss timeout alone. At most 64.
    /// Default 3.
    pub packet_threshold: u32,
    /// First re-dial delay after a connection fails, ms; doubles up to `redial_max_ms`.
    /// Default 100.
    pub redial_min_ms: u64,
    /// Default 5000.
    pub redial_max_ms: u64,
    /// Two sites share one connection, dialled at once by the site whose id sorts first. The
    /// other dials only when nothing arrived from that peer for this long (the peer may not
    /// list it, or may be down), ms. Default 2000.
    pub dial_grace_ms: u64,
    /// QUIC idle timeout: a connection silent this long is closed and re-dialled, ms.
    /// Default 3000.
    pub idle_timeout_ms: u64,
    /// Runtime threads of `axon-prober`: 1 runs everything on one thread, which costs the
    /// least CPU for a mesh of up to a few hundred peers. Default 1.
    pub worker_threads: usize,
    /// Fast liveness tuning.
    pub liveness: LivenessSettings,
    /// Evidence bursts.
    pub burst: BurstSettings,
    /// Certificates (mutual TLS is mandatory). Default files under `/etc/axon/`.
    pub tls: TlsFiles,
    /// The peers to probe. Default none.
    pub peers: Vec<PeerConfig>,
    /// Where reports go.
    pub report: ReportConfig,
}

impl Default for ProberConfig {
    fn default() -> Self {
        ProberConfig {
            site: String::new(),
            listen: SocketAddr::from(([0, 0, 0, 0], 7400)),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9400))),
            probe_interval_ms: 100,
            window_ms: 1_000,
            loss_timeout_ms: 1_000,
            packet_threshold: 3,
            redial_min_ms: 100,
            redial_max_ms: 5_000,
            dial_grace_ms: 2_000,
            idle_timeout_ms: 3_000,
            worker_threads: 1,
            liveness: LivenessSettings::default(),
            burst: BurstSettings::default(),
            tls: TlsFiles::new("/etc/axon/ca.pem", "/etc/axon/prober.pem", "/etc/axon/prober.key"),
            peers: Vec::new(),
            report: ReportConfig::default(),
        }
    }
}

/// `--config`, `--print-config` and `--check-config`, as every daemon has them.
impl ops::DaemonConfig for ProberConfig {
    fn check(&self) -> Result<(), String> {
        self.validate().map(drop).map_err(|e| e.to_string())
    }
}

impl ProberConfig {
    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ProberError> {
        <Self as ops::DaemonConfig>::parse_toml(text).map_err(ProberError::Config)
    }

    /// The effective configuration as TOML (for `--print-config`).
    pub fn to_toml(&self) -> String {
        ops::DaemonConfig::render_toml(self)
    }

    /// Checks every value and returns this site's id and the peers' ids.
    pub fn validate(&self) -> Result<(SiteId, Vec<SiteId>), ProberError> {
        let bad = |m: String| Err(ProberError::Config(m));
        let site = SiteId::new(self.site.clone()).map_err(|e| ProberError::Config(format!("site: {e}")))?;
        if !(10..=60_000).contains(&self.probe_interval_ms) {
            return bad(format!(
                "probe_interval_ms {} is outside 10..=60000",
                self.probe_interval_ms
            ));
        }
        if self.window_ms < self.probe_interval_ms || self.window_ms > 600_000 {
            return bad(format!(
                "window_ms {} must be ≥ probe_interval_ms and ≤ 600000",
                self.window_ms
            ));
        }
        if self.loss_timeout_ms == 0 || self.idle_timeout_ms == 0 {
            return bad("loss_timeout_ms and idle_timeout_ms must be positive".into());
        }
        if self.packet_threshold > 64 {
            return bad(format!("packet_threshold {} is above 64", self.packet_threshold));
        }
        if self.dial_grace_ms > 60_000 {
            return bad(format!("dial_grace_ms {} is above 60000", self.dial_grace_ms));
        }
        if self.redial_min_ms == 0 || self.redial_max_ms < self.redial_min_ms {
            return bad("redial_min_ms must be positive and ≤ redial_max_ms".into());
        }
        let l = &self.liveness;
        if !(l.deadline_factor.is_finite() && l.deadline_factor >= 1.0) {
            return bad(format!(
                "liveness.deadline_factor {} must be ≥ 1",
                l.deadline_factor
            ));
        }
        if l.min_run == 0 || l.max_run < l.min_run {
            return bad("liveness.min_run must be positive and ≤ max_run".into());
        }
        if !(l.false_alarms_per_day.is_finite() && l.false_alarms_per_day > 0.0) {
            return bad("liveness.false_alarms_per_day must be positive".into());
        }
        let b = &self.burst;
        if b.extra > 20 {
            return bad(format!("burst.extra {} is above 20", b.extra));
        }
        if b.extra > 0 && (b.duration_ms == 0 || b.cooldown_ms < b.duration_ms) {
            return bad("burst.duration_ms must be positive and ≤ burst.cooldown_ms".into());
        }
        if !(1..=10).contains(&b.chain) {
            return bad(format!("burst.chain {} is outside 1..=10", b.chain));
        }
        if !(b.max_share > 0.0 && b.max_share <= 1.0) {
            return bad(format!(
                "burst.max_share {} is outside 0 exclusive ..= 1",
                b.max_share
            ));
        }
        if b.heal_after_losses > 100 {
            return bad(format!(
                "burst.heal_after_losses {} is above 100",
                b.heal_after_losses
            ));
        }
        if b.heal_after_losses > 0 && (b.heal_quiet_ms == 0 || b.heal_lookback_ms == 0) {
            return bad("burst.heal_quiet_ms and burst.heal_lookback_ms must be positive".into());
        }
        if b.asked_max > 10 {
            return bad(format!("burst.asked_max {} is above 10", b.asked_max));
        }
        if !(0.0..=1.0).contains(&b.below_miss_rate) {
            return bad(format!(
                "burst.below_miss_rate {} is outside 0..=1",
                b.below_miss_rate
            ));
        }
        if !(1..=64).contains(&self.worker_threads) {
            return bad(format!(
                "worker_threads {} is outside 1..=64",
                self.worker_threads
            ));
        }
        if self.report.buffer == 0 {
            return bad("report.buffer must be positive".into());
        }
        let mut peers = Vec::with_capacity(self.peers.len());
        for p in &self.peers {
            let id = SiteId::new(p.site.clone()).map_err(|e| ProberError::Config(format!("peer: {e}")))?;
            if id == site {
                return bad(format!("peer {id} is this prober's own site"));
            }
            if peers.contains(&id) {
                return bad(format!("peer {id} is listed twice"));
            }
            peers.push(id);
        }
        Ok((site, peers))
    }

    /// The per-peer session settings this config implies.
    pub fn session(&self) -> SessionConfig {
        let l = &self.liveness;
        SessionConfig {
            loss_timeout: Duration::from_millis(self.loss_timeout_ms),
            packet_threshold: self.packet_threshold,
            liveness: LivenessConfig {
                probe_interval: Duration::from_millis(self.probe_interval_ms),
                deadline_factor: l.deadline_factor,
                deadline_margin: Duration::from_millis(l.deadline_margin_ms),
                min_run: l.min_run,
                max_run: l.max_run,
                false_alarms_per_day: l.false_alarms_per_day,
                warmup_probes: l.warmup_probes,
                ..LivenessConfig::default()
            },
            burst: BurstConfig {
                extra: self.burst.extra,
                duration: Duration::from_millis(self.burst.duration_ms),
                cooldown: Duration::from_millis(self.burst.cooldown_ms),
                chain: self.burst.chain,
                below_miss_rate: self.burst.below_miss_rate,
                max_share: self.burst.max_share,
                heal_after_losses: self.burst.heal_after_losses,
                heal_quiet: Duration::from_millis(self.burst.heal_quiet_ms),
                heal_lookback: Duration::from_millis(self.burst.heal_lookback_ms),
                asked_max: self.burst.asked_max,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml_and_unknown_keys_are_refused() {
        let d = ProberConfig {
            site: "aws-use1".into(),
            ..Default::default()
        };
        assert_eq!(ProberConfig::from_toml(&d.to_toml()).unwrap(), d);
        let err = ProberConfig::from_toml("site = \"a\"\nprobe_hz = 3\n").unwrap_err();
        assert!(err.to_string().contains("probe_hz"), "{err}");
    }

    #[test]
    fn invalid_values_are_refused_with_their_name() {
        let base = ProberConfig {
            site: "a".into(),
            ..Default::default()
        };
        let cases: Vec<(ProberConfig, &str)> = vec![
            (
                ProberConfig {
                    site: "".into(),
                    ..base.clone()
                },
                "site",
            ),
            (
                ProberConfig {
                    probe_interval_ms: 1,
                    ..base.clone()
                },
                "probe_interval_ms",
            ),
            (
                ProberConfig {
                    window_ms: 50,
                    ..base.clone()
                },
                "window_ms",
            ),
            (
                ProberConfig {
                    packet_threshold: 65,
                    ..base.clone()
                },
                "packet_threshold",
            ),
            (
                ProberConfig {
                    peers: vec![PeerConfig {
                        site: "a".into(),
                        addr: "127.0.0.1:1".parse().unwrap(),
                    }],
                    ..base.clone()
                },
                "own site",
            ),
            (
                ProberConfig {
                    burst: BurstSettings {
                        duration_ms: 6_000,
                        ..Default::default()
                    },
                    ..base.clone()
                },
                "burst.duration_ms",
            ),
            (
                ProberConfig {
                    burst: BurstSettings {
                        below_miss_rate: f64::NAN,
                        ..Default::default()
                    },
                    ..base.clone()
                },
                "burst.below_miss_rate",
            ),
            (
                ProberConfig {
                    burst: BurstSettings {
                        chain: 0,
                        ..Default::default()
                    },
                    ..base.clone()
                },
                "burst.chain",
            ),
            (
                ProberConfig {
                    burst: BurstSettings {
                        max_share: 0.0,
                        ..Default::default()
                    },
                    ..base.clone()
                },
                "burst.max_share",
            ),
            (
                ProberConfig {
                    burst: BurstSettings {
                        heal_after_losses: 101,
                        ..Default::default()
                    },
                    ..base.clone()
                },
                "burst.heal_after_losses",
            ),
            (
                ProberConfig {
                    burst: BurstSettings {
                        asked_max: 11,
                        ..Default::default()
                    },
                    ..base.clone()
                },
                "burst.asked_max",
            ),
            (
                ProberConfig {
                    burst: BurstSettings {
                        heal_quiet_ms: 0,
                        ..Default::default()
                    },
                    ..base.clone()
                },
                "burst.heal_quiet_ms",
            ),
            (
                ProberConfig {
                    liveness: LivenessSettings {
                        min_run: 5,
                        max_run: 3,
                        ..Default::default()
                    },
                    ..base.clone()
                },
                "min_run",
            ),
        ];
        for (cfg, needle) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
        assert!(base.validate().is_ok());
    }
}
