//! The lab's report: what an operator evaluating Axon wants to know, as JSON and as text.

use serde::Serialize;

use crate::targets::TargetCheck;

/// One fault's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    /// When it started, s.
    pub at_s: f64,
    /// Its kind (`blackhole`, …).
    pub kind: String,
    /// As written in the scenario.
    pub target: String,
    /// Its value as written: the loss fraction added, the ms of delay or jitter added (0 for
    /// kinds without one).
    #[serde(default)]
    pub value: f64,
    /// Fault → the controller marked the link (or site) down or degraded; `null` if never.
    pub detect_s: Option<f64>,
    /// Fault → the last affected agent applied a path that avoids it; `null` if never.
    pub converge_s: Option<f64>,
    /// Pairs whose primary used what the fault hit when it started.
    pub affected_pairs: usize,
    /// The fault's end → every affected pair holds a path within 2% of the oracle's cost
    /// again: how long the mesh stays on detours once the fault is gone. `null` for a fault
    /// without an end, or one not recovered from within the run.
    pub recover_s: Option<f64>,
    /// The pair that held the recovery longest: the last one seen off the oracle (checked
    /// every second once the fault is over), its path, its cost against the oracle's and the
    /// leader's reason for keeping it. `null` when every pair was back at the first check.
    pub recover_held_by: Option<String>,
    /// Loss faults: fault → the emulator's first drop on the faulted links (the network had
    /// not lost anything before it, so there was nothing to detect); `detect_s` minus this is
    /// Axon's own reaction. `null` for other kinds, or if nothing was dropped.
    pub first_drop_s: Option<f64>,
    /// Loss faults: fault → the first window either end of a faulted link closed with a probe
    /// lost: the first evidence the controller could see. A drop can hit a QUIC
    /// acknowledgement instead, which no probe sees; a probe is counted lost once three later
    /// ones were echoed, or a loss timeout after it was sent, and its burst begins then, up to
    /// a second (one window) before this. `converge_s` minus this is the controller's and the
    /// agents' reaction to the evidence. `null` for other kinds, or if no probe was lost.
    pub first_probe_lost_s: Option<f64>,
}

/// Percentiles.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spread {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Spread {
    /// From samples (all zero when there are none).
    pub fn of(mut v: Vec<f64>) -> Spread {
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Spread {
            p50: at(0.5),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// How fast faults were routed around: the spread of `converge_s` over the faults that
/// converged, and how many did not. A fault never routed around is no sample, so the spread
/// alone would hide it: `not_converged` says it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Convergence {
    /// Median over the faults that converged, s.
    pub p50: f64,
    /// 99th percentile over them, s.
    pub p99: f64,
    /// The slowest of them, s.
    pub max: f64,
    /// Faults counted (started within the run).
    pub faults: usize,
    /// Of those, faults whose affected pairs were not all routed around within the run.
    pub not_converged: usize,
}

impl Convergence {
    /// From each fault's `converge_s` (`None`: never).
    pub fn of(samples: impl IntoIterator<Item = Option<f64>>) -> Convergence {
        let (mut done, mut faults) = (Vec::new(), 0);
        for s in samples {
            faults += 1;
            done.extend(s);
        }
        let not_converged = faults - done.len();
        let Spread { p50, p99, max } = Spread::of(done);
        Convergence {
            p50,
            p99,
            max,
            faults,
            not_converged,
        }
    }

    fn line(&self, label: &str) -> String {
        // Zeros would read as instant convergence where there was nothing to converge.
        if self.faults == self.not_converged {
            let what = match self.faults {
                0 => "no fault to route around".to_string(),
                1 => "1 fault, never converged".to_string(),
                k => format!("{k} faults, none converged"),
            };
            return format!("  {label:<16} {what}\n");
        }
        let never = match self.not_converged {
            0 => String::new(),
            k => format!(", {k} never"),
        };
        format!(
            "  {label:<16} p50 {:.2} s  p99 {:.2} s  max {:.2} s  ({} fault{}{never})\n",
            self.p50,
            self.p99,
            self.max,
            self.faults,
            if self.faults == 1 { "" } else { "s" },
        )
    }
}

/// Route quality against the oracle, outside fault transients.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QualityReport {
    /// Mean of (applied path's true cost / oracle cost) over sampled pairs.
    pub mean_cost_ratio_vs_oracle: f64,
    /// Share of sampled pairs within 2% of the oracle.
    pub pairs_within_2pct_of_oracle: f64,
    /// Pairs whose direct path breaks the voice thresholds (RTT > 320 ms, loss > 1.2%,
    /// jitter > 12 ms).
    pub poor_pairs: usize,
    /// Of those, pairs whose applied path meets them at the end of the run.
    pub poor_pairs_fixed: usize,
    /// Of those, pairs some path of at most `max_relays` relays could fix.
    pub poor_pairs_fixable: usize,
    /// The same samples against the direct path: what Axon gained over the internet's own
    /// route.
    pub vs_direct: DirectReport,
}

/// What routing every pair on its direct link would have given, over the samples of
/// [`QualityReport`] whose direct link is usable: the gain an operator weighs Axon by.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DirectReport {
    /// Share of these samples on a relayed path.
    pub pairs_relayed: f64,
    /// Mean of (direct path's true cost / oracle cost): 1.0 when no relay ever helps.
    pub mean_direct_cost_ratio_vs_oracle: f64,
    /// Mean true round trip of the applied paths, ms.
    pub mean_rtt_ms: f64,
    /// Mean true round trip of the direct paths, ms.
    pub mean_direct_rtt_ms: f64,
    /// Round trip the relayed samples saved against their direct path, ms (negative where a
    /// relay was taken for loss or jitter, not distance).
    pub relayed_rtt_saved_ms: Spread,
}

/// Evidence bursts over every prober (see `prober::session::BurstConfig`): what the probing
/// spent on surprising misses, and what it held back.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BurstReport {
    /// Bursts started.
    pub started: u64,
    /// Of those, heal bursts: a link that missed, probed harder once quiet so that the end
    /// of its brown-out is seen in seconds.
    pub heal: u64,
    /// Of those, bursts the controller asked for: a rise in loss it found and had not yet
    /// confirmed.
    pub asked: u64,
    /// Of those, bursts for a miss within the cooldown of the burst before, started as it
    /// ended.
    pub deferred: u64,
    /// Bursts not started because a quarter of the prober's peers were bursting already.
    pub refused_slots: u64,
    /// Bursts not started because the miss came just after a stall of the host.
    pub refused_host_stall: u64,
    /// Misses that started no burst because their link misses too often (lossy by nature,
    /// or still counting a recent brown-out's misses).
    pub refused_lossy: u64,
    /// Asks of the controller's past the run a link may burst for in a row.
    pub refused_asked_limit: u64,
}

/// Everything the lab measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Sites.
    pub sites: usize,
    /// Run length, s.
    pub duration_s: f64,
    /// Probes per second per peer.
    pub probe_hz: f64,
    /// Per fault.
    pub faults: Vec<FaultReport>,
    /// Over every fault that started: the spread over those that converged, and how many
    /// did not.
    pub convergence_s: Convergence,
    /// The same by fault kind (`blackhole`, `loss`, …): each kind has its own target, and a
    /// spread over every kind at once mixes a blackhole's fraction of a second with the
    /// seconds a brown-out's evidence takes.
    #[serde(default)]
    pub convergence_by_kind_s: std::collections::BTreeMap<String, Convergence>,
    /// Route quality.
    pub quality: QualityReport,
    /// Primary changes outside fault transients, per pair and hour: not within 10 s of a
    /// fault's start or end, nor a fault's pair converging on it or recovering from it.
    pub flaps_per_pair_hour: f64,
    /// Primary changes seen at the agents, all of them.
    pub route_changes: usize,
    /// Route tables the controllers published (every replica, killed ones included), by
    /// cause: `paths` (a path moved, or a drain or a new leadership) or `costs` (costs
    /// drifted past `engine.refresh` while the paths stood). Each is a message to every agent.
    #[serde(default)]
    pub tables_published: std::collections::BTreeMap<String, u64>,
    /// Link-down verdicts the probers took back because their host stalled while the misses
    /// behind them were in flight (see `prober::session::PeerSession::poll`).
    pub downs_held: u64,
    /// Replies whose round trip spanned a stall of either end's host, kept out of the RTT
    /// and jitter the probers report (see `prober::session::EchoKind::AcrossStall`).
    #[serde(default)]
    pub rtt_across_stall: u64,
    /// Probe reports the controllers refused (`axon_ingest_rejected_total`, every replica,
    /// killed ones included): a report the lab's own probers send is never bad input, so
    /// anything here is a measurement lost to a check that is wrong.
    #[serde(default)]
    pub reports_refused: u64,
    /// Those, by the controller's reason (reasons with none left out).
    #[serde(default)]
    pub reports_refused_by: std::collections::BTreeMap<String, u64>,
    /// |controller's smoothed RTT − true RTT| over links, ms: read once a second where the
    /// route quality is (outside a fault's transient), or at the run's end when no such second
    /// came.
    pub rtt_error_ms: Spread,
    /// |controller's smoothed jitter − true jitter| over links, ms, read as `rtt_error_ms`. The truth is what RFC 3550
    /// reads of the emulator's jitter; the rest is this host's scheduling, which a lab of many
    /// sites on a few cores adds to every probe (the emulator stamps its own packets in the
    /// kernel, a prober's QUIC stack cannot).
    pub jitter_error_ms: Spread,
    /// Mean |measured loss − true loss|, percentage points.
    pub loss_error_pp: f64,
    /// How late the emulator sent packets on against their emulated delay, ms (negative: a
    /// little early, by the sender's learnt wake-up lead). Every round trip a prober measures
    /// carries two of these: a host too busy to run the emulator on time shows here and in
    /// `rtt_error_ms` alike, and the difference is the probers' own.
    #[serde(default)]
    pub emulator_late_ms: Spread,
    /// The share of the machine's CPU time a hypervisor gave other guests during the run
    /// (steal, from `/proc/stat`), percent: on a busy virtual machine this host runs the
    /// whole mesh late, whatever Axon does.
    #[serde(default)]
    pub host_steal_pct: f64,
    /// Probe traffic on the wire (IPv4 + UDP + QUIC, both ways) per ordered pair, bit/s.
    pub probe_overhead_bps_per_pair: f64,
    /// Evidence bursts, part of that traffic.
    pub bursts: BurstReport,
    /// CPU used by the whole lab process (every prober, agent and the controller), s.
    pub cpu_seconds: f64,
    /// The run against the scenario's targets (see [`crate::targets`]).
    #[serde(default)]
    pub targets: Vec<TargetCheck>,
}

impl Report {
    /// A human summary.
    pub fn text(&self) -> String {
        let mut s = format!(
            "scenario {}: {} sites, {:.0} s at {} Hz\n",
            self.scenario, self.sites, self.duration_s, self.probe_hz
        );
        for f in &self.faults {
            let opt = |v: Option<f64>| v.map_or("never".to_string(), |x| format!("{x:.2} s"));
            s += &format!(
                "  fault at {:>5.1} s  {:<13} {:<24} detect {:>8}  converge {:>8}  recover {:>8}  ({} pairs){}\n",
                f.at_s,
                f.kind,
                f.target,
                opt(f.detect_s),
                opt(f.converge_s),
                if f.kind == "controller_kill" {
                    "n/a".to_string()
                } else {
                    opt(f.recover_s)
                },
                f.affected_pairs,
                f.first_drop_s
                    .map_or_else(String::new, |x| format!(", first drop after {x:.2} s"))
                    + &f.first_probe_lost_s
                        .map_or_else(String::new, |x| format!(", first probe lost after {x:.2} s"))
            );
            if let Some(h) = &f.recover_held_by
                && f.recover_s.is_none_or(|r| r >= 5.0)
            {
                s += &format!("      recovery held by {h}\n");
            }
        }
        let q = self.quality;
        s += &self.convergence_s.line("convergence");
        // By kind, when there is more than one.
        if self.convergence_by_kind_s.len() > 1 {
            for (kind, c) in &self.convergence_by_kind_s {
                s += &c.line(&format!("  {kind}"));
            }
        }
        s += &format!(
            "  quality          {:.1}% of pairs within 2% of the oracle, mean cost ratio {:.3}\n",
            q.pairs_within_2pct_of_oracle * 100.0,
            q.mean_cost_ratio_vs_oracle
        );
        let d = q.vs_direct;
        s += &format!(
            "  vs direct        {:.1}% of pairs relayed, round trip {:.1} ms on average against {:.1} ms direct (relayed pairs saved p50 {:.1} ms, max {:.1} ms); all-direct would cost {:.3}x the oracle\n",
            d.pairs_relayed * 100.0,
            d.mean_rtt_ms,
            d.mean_direct_rtt_ms,
            d.relayed_rtt_saved_ms.p50,
            d.relayed_rtt_saved_ms.max,
            d.mean_direct_cost_ratio_vs_oracle
        );
        s += &format!(
            "  poor pairs       {} (fixable {}, fixed {})\n",
            q.poor_pairs, q.poor_pairs_fixable, q.poor_pairs_fixed
        );
        s += &format!(
            "  calm             {} route changes, {:.2} flaps per pair-hour outside faults, {} link downs held and {} round trips set aside for host stalls\n",
            self.route_changes, self.flaps_per_pair_hour, self.downs_held, self.rtt_across_stall
        );
        let tables = |cause: &str| self.tables_published.get(cause).copied().unwrap_or(0);
        s += &format!(
            "  tables           {} published: {} for paths, {} for costs that drifted while the paths stood\n",
            tables("paths") + tables("costs"),
            tables("paths"),
            tables("costs")
        );
        s += &format!(
            "  measurement      RTT error p50 {:.2} ms p99 {:.2} ms, jitter error p50 {:.2} ms p99 {:.2} ms, loss error {:.2} pp\n",
            self.rtt_error_ms.p50,
            self.rtt_error_ms.p99,
            self.jitter_error_ms.p50,
            self.jitter_error_ms.p99,
            self.loss_error_pp
        );
        s += &format!(
            "  host             emulator's packets late p50 {:.2} ms p99 {:.2} ms max {:.1} ms, {:.0}% of the CPU stolen by the hypervisor\n",
            self.emulator_late_ms.p50,
            self.emulator_late_ms.p99,
            self.emulator_late_ms.max,
            self.host_steal_pct
        );
        let by: Vec<String> = self
            .reports_refused_by
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        s += &format!(
            "  reports          {} refused by the controllers{}\n",
            self.reports_refused,
            if by.is_empty() {
                String::new()
            } else {
                format!(" ({})", by.join(", "))
            }
        );
        s += &format!(
            "  cost             {:.0} bit/s per ordered pair on the wire, {:.1} CPU s for the whole lab\n",
            self.probe_overhead_bps_per_pair, self.cpu_seconds
        );
        let b = self.bursts;
        s += &format!(
            "  bursts           {} started ({} to confirm a heal, {} asked by the controller, {} after a cooldown), {} held back (slots {}, host stalls {}), {} misses on links too lossy to burst, {} asks past the limit\n",
            b.started,
            b.heal,
            b.asked,
            b.deferred,
            b.refused_slots + b.refused_host_stall,
            b.refused_slots,
            b.refused_host_stall,
            b.refused_lossy,
            b.refused_asked_limit
        );
        if !self.targets.is_empty() {
            let met = self.targets.iter().filter(|t| t.met).count();
            s += &format!("  targets          {met} of {} met\n", self.targets.len());
            for t in &self.targets {
                s += &format!("    {}\n", t.line());
            }
        }
        s
    }

    /// The targets the run missed, by name: empty when it met every one.
    pub fn missed_targets(&self) -> Vec<&str> {
        self.targets
            .iter()
            .filter(|t| !t.met)
            .map(|t| t.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_never_routed_around_is_counted_not_dropped() {
        let c = Convergence::of([Some(0.5), None, Some(2.0), Some(1.0)]);
        assert_eq!((c.faults, c.not_converged), (4, 1));
        assert_eq!((c.p50, c.max), (1.0, 2.0));
        let text = c.line("convergence");
        assert!(text.contains("(4 faults, 1 never)"), "{text}");
        // No fault at all: zeros in the JSON, and the text says there was nothing to time.
        let none = Convergence::of([]);
        assert_eq!((none.faults, none.not_converged, none.max), (0, 0, 0.0));
        assert!(none.line("x").contains("no fault"), "{}", none.line("x"));
        let failed = Convergence::of([None, None]).line("x");
        assert!(
            failed.contains("2 faults, none converged") && !failed.contains("p50"),
            "{failed}"
        );
        assert!(Convergence::of([Some(0.3)]).line("x").contains("(1 fault)"));
    }
}
