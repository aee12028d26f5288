//! What a run is judged against: Axon's objectives for a mesh, each checked in the report, so
//! that a run states its own standing instead of leaving it to whoever reads the figures.
//!
//! A scenario may set its own limits in a `[targets]` table; the defaults are Axon's targets
//! for 25 sites probed at 10 Hz in 1-s windows. A target a run has nothing to measure for (no
//! blackhole in the timeline, no pair a relay could fix) is not listed: an empty check would
//! read as a success.

use serde::{Deserialize, Serialize};

use crate::report::Report;

/// The limits a run is held to.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Targets {
    /// Median time to route around a blackhole, s, a blackhole never routed around counting
    /// as infinitely slow. Default 1.0.
    pub blackhole_p50_s: f64,
    /// 99th percentile of the same, s. Default 2.0.
    pub blackhole_p99_s: f64,
    /// Time within which every brown-out must be routed around, s. Default 10.
    pub brownout_s: f64,
    /// The least loss a `loss` fault adds to count as a brown-out (fraction). Default 0.02.
    pub brownout_min_loss: f64,
    /// The least share of sampled pairs within 2% of the oracle's cost, outside fault
    /// transients. Default 0.99.
    pub within_2pct_of_oracle: f64,
    /// The most route flaps per pair and hour outside fault transients. Default: 0 for a
    /// scenario without faults (calm on noise alone), unchecked for one with faults, whose
    /// transients can move pairs that no fault hit.
    pub max_flaps_per_pair_hour: Option<f64>,
    /// The largest median error of the controller's smoothed RTT against the true one, ms.
    /// Default 0.5.
    pub rtt_error_p50_ms: f64,
    /// The probing budget: probe traffic on the wire per ordered pair (one direction), bit/s,
    /// evidence bursts included. Default 10,000.
    pub probe_bps_per_pair: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Targets {
            blackhole_p50_s: 1.0,
            blackhole_p99_s: 2.0,
            brownout_s: 10.0,
            brownout_min_loss: 0.02,
            within_2pct_of_oracle: 0.99,
            max_flaps_per_pair_hour: None,
            rtt_error_p50_ms: 0.5,
            probe_bps_per_pair: 10_000.0,
        }
    }
}

impl Targets {
    /// Refuses a limit that is negative or not a number, a share above 1 and a brown-out
    /// threshold outside (0, 1]; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let limits = [
            ("blackhole_p50_s", self.blackhole_p50_s),
            ("blackhole_p99_s", self.blackhole_p99_s),
            ("brownout_s", self.brownout_s),
            ("rtt_error_p50_ms", self.rtt_error_p50_ms),
            ("probe_bps_per_pair", self.probe_bps_per_pair),
            (
                "max_flaps_per_pair_hour",
                self.max_flaps_per_pair_hour.unwrap_or(0.0),
            ),
        ];
        for (key, v) in limits {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("targets.{key} {v} must be a number ≥ 0"));
            }
        }
        if !(0.0..=1.0).contains(&self.within_2pct_of_oracle) {
            return Err(format!(
                "targets.within_2pct_of_oracle {} must be a share in [0, 1]",
                self.within_2pct_of_oracle
            ));
        }
        if !(self.brownout_min_loss > 0.0 && self.brownout_min_loss <= 1.0) {
            return Err(format!(
                "targets.brownout_min_loss {} must be a fraction in (0, 1]",
                self.brownout_min_loss
            ));
        }
        Ok(())
    }

    /// Checks a finished run's report against these limits, in a fixed order.
    pub fn check(&self, r: &Report) -> Vec<TargetCheck> {
        let mut out = Vec::new();
        // Only faults the run reached: a run cut short (`--duration`) lists the rest unstarted.
        let faults: Vec<_> = r.faults.iter().filter(|f| f.at_s < r.duration_s).collect();
        let blackholes: Vec<Option<f64>> = faults
            .iter()
            .filter(|f| f.kind == "blackhole")
            .map(|f| f.converge_s)
            .collect();
        if !blackholes.is_empty() {
            let n = blackholes.len();
            let never = blackholes.iter().filter(|c| c.is_none()).count();
            let detail = match never {
                0 => format!("{n} blackhole{}", plural(n)),
                k => format!("{n} blackhole{}, {k} never routed around", plural(n)),
            };
            for (name, q, limit) in [
                ("blackhole_p50_s", 0.5, self.blackhole_p50_s),
                ("blackhole_p99_s", 0.99, self.blackhole_p99_s),
            ] {
                let measured = percentile(&blackholes, q);
                out.push(TargetCheck::at_most(name, limit, measured, detail.clone()));
            }
        }
        let brownout_faults: Vec<_> = faults
            .iter()
            .filter(|f| f.kind == "loss" && f.value >= self.brownout_min_loss)
            .collect();
        if !brownout_faults.is_empty() {
            let brownouts: Vec<Option<f64>> = brownout_faults.iter().map(|f| f.converge_s).collect();
            let n = brownouts.len();
            let in_time = |c: Option<f64>| c.is_some_and(|c| c <= self.brownout_s);
            let within = brownouts.iter().filter(|&&c| in_time(c)).count();
            // A miss with no lost probe before the limit had nothing to act on in time: at a
            // few percent of loss and ten probes a second that is down to chance (0.98^80 is
            // one in five), so the line tells such misses from slow reactions.
            let unseen = brownout_faults
                .iter()
                .filter(|f| !in_time(f.converge_s) && !in_time(f.first_probe_lost_s))
                .count();
            let unseen = match unseen {
                0 => String::new(),
                k => format!(
                    " ({k} of the others lost no probe before {} s: no evidence in time)",
                    self.brownout_s
                ),
            };
            let worst = percentile(&brownouts, 1.0);
            out.push(TargetCheck::at_most(
                "brownout_s",
                self.brownout_s,
                worst,
                format!(
                    "{within} of {n} brown-out{} (≥ {}% loss) within {} s{unseen}; the slowest",
                    plural(n),
                    self.brownout_min_loss * 100.0,
                    self.brownout_s
                ),
            ));
        }
        out.push(TargetCheck::at_least(
            "within_2pct_of_oracle",
            self.within_2pct_of_oracle,
            r.quality.pairs_within_2pct_of_oracle,
            "share of sampled pairs within 2% of the oracle outside fault transients".into(),
        ));
        let flaps = match self.max_flaps_per_pair_hour {
            Some(limit) => Some(limit),
            None if faults.is_empty() => Some(0.0),
            None => None,
        };
        if let Some(limit) = flaps {
            out.push(TargetCheck::at_most(
                "max_flaps_per_pair_hour",
                limit,
                Some(r.flaps_per_pair_hour),
                "route flaps per pair-hour outside fault transients".into(),
            ));
        }
        let q = r.quality;
        if q.poor_pairs_fixable > 0 {
            out.push(TargetCheck::at_least(
                "poor_pairs_fixed",
                q.poor_pairs_fixable as f64,
                q.poor_pairs_fixed as f64,
                format!(
                    "of {} pairs whose direct path breaks the voice thresholds, those a relay can fix",
                    q.poor_pairs
                ),
            ));
        }
        out.push(TargetCheck::at_most(
            "rtt_error_p50_ms",
            self.rtt_error_p50_ms,
            Some(r.rtt_error_ms.p50),
            "median error of the controller's smoothed RTT".into(),
        ));
        out.push(TargetCheck::at_most(
            "probe_bps_per_pair",
            self.probe_bps_per_pair,
            Some(r.probe_overhead_bps_per_pair),
            "probe traffic per ordered pair on the wire, evidence bursts included".into(),
        ));
        out
    }
}

/// One objective's outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCheck {
    /// The objective, named as its key in `[targets]`.
    pub name: String,
    /// `"<="` or `">="`: how the measured value must stand to the limit.
    pub rule: &'static str,
    /// The limit.
    pub limit: f64,
    /// What the run measured; `null` when it never happened (a fault never routed around).
    pub measured: Option<f64>,
    /// Whether the run met it.
    pub met: bool,
    /// What was measured, in words.
    pub detail: String,
}

impl TargetCheck {
    fn at_most(name: &str, limit: f64, measured: Option<f64>, detail: String) -> Self {
        TargetCheck {
            name: name.into(),
            rule: "<=",
            limit,
            measured,
            met: measured.is_some_and(|m| m <= limit),
            detail,
        }
    }

    fn at_least(name: &str, limit: f64, measured: f64, detail: String) -> Self {
        TargetCheck {
            name: name.into(),
            rule: ">=",
            limit,
            measured: Some(measured),
            met: measured >= limit,
            detail,
        }
    }

    /// One line for the human summary.
    pub fn line(&self) -> String {
        let value = |v: f64| {
            if v.abs() >= 100.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        format!(
            "{:<6} {:<24} {} {} {}: {}",
            if self.met { "met" } else { "MISSED" },
            self.name,
            self.measured.map_or_else(|| "never".into(), value),
            if self.rule == "<=" { "≤" } else { "≥" },
            value(self.limit),
            self.detail
        )
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The `q` quantile (nearest rank, as the report's spreads) of samples where `None` is
/// "never", ranked above every time; `None` when the quantile falls on one.
fn percentile(samples: &[Option<f64>], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().map(|s| s.unwrap_or(f64::INFINITY)).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let at = v[((v.len() - 1) as f64 * q).round() as usize];
    at.is_finite().then_some(at)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::report::{BurstReport, Convergence, FaultReport, QualityReport, Spread};

    fn fault(kind: &str, value: f64, converge_s: Option<f64>) -> FaultReport {
        FaultReport {
            at_s: 20.0,
            kind: kind.into(),
            target: "a<->b".into(),
            value,
            detect_s: converge_s,
            converge_s,
            affected_pairs: 2,
            recover_s: None,
            recover_held_by: None,
            first_drop_s: None,
            first_probe_lost_s: None,
        }
    }

    fn report(faults: Vec<FaultReport>) -> Report {
        Report {
            scenario: "t".into(),
            sites: 4,
            duration_s: 60.0,
            probe_hz: 10.0,
            faults,
            convergence_s: Convergence::default(),
            convergence_by_kind_s: Default::default(),
            quality: QualityReport {
                mean_cost_ratio_vs_oracle: 1.0,
                pairs_within_2pct_of_oracle: 0.995,
                poor_pairs: 3,
                poor_pairs_fixed: 1,
                poor_pairs_fixable: 2,
                ..Default::default()
            },
            flaps_per_pair_hour: 0.1,
            route_changes: 10,
            tables_published: Default::default(),
            downs_held: 0,
            rtt_across_stall: 0,
            reports_refused: 0,
            reports_refused_by: Default::default(),
            rtt_error_ms: Spread {
                p50: 0.2,
                p99: 1.0,
                max: 2.0,
            },
            jitter_error_ms: Spread::default(),
            loss_error_pp: 0.0,
            emulator_late_ms: Spread::default(),
            host_steal_pct: 0.0,
            probe_overhead_bps_per_pair: 11_500.0,
            bursts: BurstReport::default(),
            cpu_seconds: 1.0,
            targets: Vec::new(),
        }
    }

    fn get<'a>(checks: &'a [TargetCheck], name: &str) -> Option<&'a TargetCheck> {
        checks.iter().find(|c| c.name == name)
    }

    #[test]
    fn blackholes_are_judged_with_a_missed_one_as_the_slowest() {
        let t = Targets::default();
        let quick: Vec<_> = [0.4, 0.6, 0.9].map(|c| fault("blackhole", 0.0, Some(c))).into();
        let checks = t.check(&report(quick.clone()));
        let p50 = get(&checks, "blackhole_p50_s").unwrap();
        assert_eq!((p50.measured, p50.met), (Some(0.6), true));
        assert!(get(&checks, "blackhole_p99_s").unwrap().met);
        // One never routed around: the 99th percentile is "never", and missed.
        let mut slow = quick;
        slow.push(fault("blackhole", 0.0, None));
        let checks = t.check(&report(slow));
        let p99 = get(&checks, "blackhole_p99_s").unwrap();
        assert_eq!((p99.measured, p99.met), (None, false));
        assert!(p99.detail.contains("1 never"), "{}", p99.detail);
        assert!(
            p99.line().starts_with("MISSED") && p99.line().contains("never"),
            "{}",
            p99.line()
        );
        // The median of four, one never: the third fastest rounds to rank 2 (0.9 s).
        assert_eq!(get(&checks, "blackhole_p50_s").unwrap().measured, Some(0.9));
    }

    #[test]
    fn only_loss_faults_past_the_threshold_are_brownouts() {
        let t = Targets::default();
        let faults = vec![
            fault("loss", 0.05, Some(4.0)),
            fault("loss", 0.02, Some(11.0)),
            // 1% is no brown-out: its slow convergence is not judged.
            fault("loss", 0.01, None),
            fault("delay", 50.0, None),
        ];
        let checks = t.check(&report(faults.clone()));
        let b = get(&checks, "brownout_s").unwrap();
        assert_eq!((b.measured, b.met), (Some(11.0), false));
        assert!(b.detail.starts_with("1 of 2 brown-outs"), "{}", b.detail);
        // The miss never lost a probe (no `first_probe_lost_s`): nothing to act on, and the
        // line says so; so does one whose first lost probe came after the limit, while a miss
        // whose evidence came in time is a slow reaction, and the line does not excuse it.
        assert!(b.detail.contains("1 of the others lost no probe"), "{}", b.detail);
        let mut late_evidence = faults.clone();
        late_evidence[1].first_probe_lost_s = Some(10.5);
        let checks = t.check(&report(late_evidence));
        let b = get(&checks, "brownout_s").unwrap();
        assert!(
            b.detail.contains("1 of the others lost no probe before 10 s") && !b.met,
            "{}",
            b.detail
        );
        let mut slow_reaction = faults;
        slow_reaction[1].first_probe_lost_s = Some(6.0);
        let checks = t.check(&report(slow_reaction));
        let b = get(&checks, "brownout_s").unwrap();
        assert!(!b.detail.contains("no evidence"), "{}", b.detail);
        assert!(
            get(&checks, "blackhole_p50_s").is_none(),
            "no blackhole, no check"
        );
        // A run cut short before a fault's start does not judge it: it never happened.
        let mut late = fault("blackhole", 0.0, None);
        late.at_s = 90.0;
        let mut cut = report(vec![late]);
        assert!(get(&t.check(&cut), "blackhole_p50_s").is_none());
        cut.duration_s = 120.0;
        assert!(!get(&t.check(&cut), "blackhole_p50_s").unwrap().met);
        let lenient = Targets {
            brownout_s: 12.0,
            ..t
        };
        assert!(
            get(
                &lenient.check(&report(vec![fault("loss", 0.02, Some(11.0))])),
                "brownout_s"
            )
            .unwrap()
            .met
        );
    }

    #[test]
    fn flaps_are_held_to_zero_on_noise_alone_and_otherwise_only_when_asked() {
        let t = Targets::default();
        let calm = t.check(&report(Vec::new()));
        let f = get(&calm, "max_flaps_per_pair_hour").unwrap();
        assert_eq!(
            (f.limit, f.met),
            (0.0, false),
            "0.1 flaps on noise alone is a miss"
        );
        let faulted = report(vec![fault("blackhole", 0.0, Some(0.5))]);
        assert!(get(&t.check(&faulted), "max_flaps_per_pair_hour").is_none());
        let asked = Targets {
            max_flaps_per_pair_hour: Some(0.2),
            ..t
        };
        assert!(
            get(&asked.check(&faulted), "max_flaps_per_pair_hour")
                .unwrap()
                .met
        );
    }

    #[test]
    fn quality_measurement_and_budget_are_checked_every_run() {
        let checks = Targets::default().check(&report(Vec::new()));
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "within_2pct_of_oracle",
                "max_flaps_per_pair_hour",
                "poor_pairs_fixed",
                "rtt_error_p50_ms",
                "probe_bps_per_pair"
            ]
        );
        let met = |n: &str| get(&checks, n).unwrap().met;
        assert!(met("within_2pct_of_oracle") && met("rtt_error_p50_ms"));
        // One of two fixable poor pairs fixed; 11.5 kbit/s against a 10 kbit/s budget.
        assert!(!met("poor_pairs_fixed") && !met("probe_bps_per_pair"));
        let line = get(&checks, "probe_bps_per_pair").unwrap().line();
        assert!(line.contains("11500 ≤ 10000"), "{line}");
    }

    #[test]
    fn bad_limits_are_refused_by_name() {
        let bad = [
            Targets {
                blackhole_p50_s: -1.0,
                ..Targets::default()
            },
            Targets {
                within_2pct_of_oracle: 1.5,
                ..Targets::default()
            },
            Targets {
                brownout_min_loss: 0.0,
                ..Targets::default()
            },
            Targets {
                max_flaps_per_pair_hour: Some(f64::NAN),
                ..Targets::default()
            },
        ];
        let keys = [
            "blackhole_p50_s",
            "within_2pct_of_oracle",
            "brownout_min_loss",
            "max_flaps_per_pair_hour",
        ];
        for (t, key) in bad.iter().zip(keys) {
            let e = t.validate().unwrap_err();
            assert!(e.contains(key), "{e}");
        }
        assert!(Targets::default().validate().is_ok());
    }
}
