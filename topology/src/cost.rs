//! Link cost and predicted call quality.
//!
//! The cost is **additive along a path** so that a shortest-path search is exact:
//! `one_way_delay + w_jitter·jitter + w_loss·(−ln(1−loss)) + price + relay_penalty per relay`.
//! The `−ln(1−loss)` term makes losses compose like delivery probabilities: the sum over a path
//! is `−ln` of the path's delivery ratio. Costs are in "milliseconds of one-way delay
//! equivalent", so an operator can read them.
//!
//! Quality is reported separately, as the R-factor and MOS of a simplified ITU-T G.107 E-model,
//! so that an operator sees "MOS 4.3 direct vs 4.4 via Miami" rather than a bare number.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::TopologyError;

/// The smallest cost a usable link can have. Strictly positive costs make every walk that
/// revisits a site worse than the simple path inside it, which the path search relies on.
pub const MIN_LINK_COST: f64 = 0.01;

/// Loss ratios are clamped below this before `−ln(1−loss)` so a 100%-loss window yields a
/// large finite cost instead of infinity.
const MAX_LOSS_FOR_COST: f64 = 0.999;

/// What a link looks like right now: the inputs of the cost function.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkMetrics {
    /// Round-trip time in milliseconds (smoothed p50).
    pub rtt_ms: f64,
    /// Loss ratio 0..=1 (one direction's share is not separable from RTT probes; this is the
    /// round-trip probe loss, an upper bound on each direction).
    pub loss: f64,
    /// Interarrival jitter in milliseconds (RFC 3550 over RTT samples).
    pub jitter_ms: f64,
    /// Standard error of `loss` (how many probes it rests on), 0 for a known value. Switching
    /// asks for more than this much noise (see `hysteresis`). Default 0.
    #[serde(default)]
    pub loss_se: f64,
}

impl LinkMetrics {
    /// A clean link with only a round-trip time.
    pub fn rtt(rtt_ms: f64) -> Self {
        LinkMetrics {
            rtt_ms,
            loss: 0.0,
            jitter_ms: 0.0,
            loss_se: 0.0,
        }
    }

    /// A link with exactly known metrics (scenarios, what-if changes, tests).
    pub fn known(rtt_ms: f64, loss: f64, jitter_ms: f64) -> Self {
        LinkMetrics {
            rtt_ms,
            loss,
            jitter_ms,
            loss_se: 0.0,
        }
    }

    /// Refuses NaN, negative and absurd values (RTT over 10 s, jitter over 10 s, loss > 1).
    pub fn validate(&self) -> Result<(), TopologyError> {
        check_range("rtt_ms", self.rtt_ms, 0.0, 10_000.0)?;
        check_range("loss", self.loss, 0.0, 1.0)?;
        check_range("jitter_ms", self.jitter_ms, 0.0, 10_000.0)
    }
}

pub(crate) fn check_range(field: &'static str, value: f64, min: f64, max: f64) -> Result<(), TopologyError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(TopologyError::InvalidValue {
            field,
            detail: format!("{value} (must be within {min}..={max})"),
        })
    }
}

/// Weights of the cost function. All costs are in milliseconds of one-way-delay equivalent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CostWeights {
    /// Milliseconds of cost per millisecond of jitter. Default 2.0: a jitter buffer holds about
    /// two jitter's worth of audio, which the listener hears as delay.
    pub w_jitter: f64,
    /// Milliseconds of cost per unit of `−ln(1−loss)`. Default 5000: 1% loss costs about 50 ms,
    /// roughly where the E-model says 1% loss and 50 ms of delay hurt a call alike.
    pub w_loss_ms: f64,
    /// Cost added per relay, in milliseconds. Default 2.0: forwarding through an SFU costs a
    /// little time and a little risk, so a relay must win by more than noise.
    pub relay_penalty_ms: f64,
    /// Cost added to a link whose measurements are stale, in milliseconds. Default 50: a stale
    /// link still carries media (we keep its last metrics) but fresh paths are preferred.
    pub stale_penalty_ms: f64,
}

impl Default for CostWeights {
    fn default() -> Self {
        CostWeights {
            w_jitter: 2.0,
            w_loss_ms: 5000.0,
            relay_penalty_ms: 2.0,
            stale_penalty_ms: 50.0,
        }
    }
}

impl CostWeights {
    /// Refuses negative or non-finite weights.
    pub fn validate(&self) -> Result<(), TopologyError> {
        check_range("w_jitter", self.w_jitter, 0.0, 1e6)?;
        check_range("w_loss_ms", self.w_loss_ms, 0.0, 1e9)?;
        check_range("relay_penalty_ms", self.relay_penalty_ms, 0.0, 1e6)?;
        check_range("stale_penalty_ms", self.stale_penalty_ms, 0.0, 1e6)
    }

    /// The cost of one link, without price and relay penalty. Always ≥ [`MIN_LINK_COST`].
    pub fn link_cost(&self, m: &LinkMetrics) -> f64 {
        let cost = m.rtt_ms / 2.0 + self.w_jitter * m.jitter_ms + self.link_loss_cost(m);
        cost.max(MIN_LINK_COST)
    }

    /// The loss term of [`CostWeights::link_cost`], ms.
    pub fn link_loss_cost(&self, m: &LinkMetrics) -> f64 {
        // Most links lose nothing: skip the logarithm (a library call) for them.
        if m.loss <= 0.0 {
            return 0.0;
        }
        -self.w_loss_ms * (-m.loss.clamp(0.0, MAX_LOSS_FOR_COST)).ln_1p()
    }

    /// The standard error of [`CostWeights::link_cost`] that the loss estimate's error carries
    /// (`w_loss · se / (1 − loss)`, the slope of `−ln(1−loss)`), in milliseconds.
    pub fn link_cost_se(&self, m: &LinkMetrics) -> f64 {
        let loss = m.loss.clamp(0.0, MAX_LOSS_FOR_COST);
        self.w_loss_ms * m.loss_se.max(0.0) / (1.0 - loss)
    }
}

/// Optional egress prices: trade milliseconds for money at a configured exchange rate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriceBook {
    /// Milliseconds of cost per $/GB of egress price. Default 0 (prices ignored). At 100, a
    /// link at $0.09/GB costs 9 ms more than a free one.
    pub ms_per_usd_per_gb: f64,
    /// $/GB from the first provider to the second (`"aws" -> "gcp" = 0.09`). Pairs not listed
    /// cost `default_usd_per_gb`.
    pub usd_per_gb: HashMap<String, HashMap<String, f64>>,
    /// Price of pairs not listed, $/GB. Default 0.
    pub default_usd_per_gb: f64,
}

impl PriceBook {
    /// The price term of a link from `from` to `to` provider, in milliseconds.
    pub fn cost_ms(&self, from: &str, to: &str) -> f64 {
        if self.ms_per_usd_per_gb == 0.0 {
            return 0.0;
        }
        let price = self
            .usd_per_gb
            .get(from)
            .and_then(|m| m.get(to))
            .copied()
            .unwrap_or(self.default_usd_per_gb);
        price * self.ms_per_usd_per_gb
    }

    /// Refuses negative or non-finite prices.
    pub fn validate(&self) -> Result<(), TopologyError> {
        check_range("ms_per_usd_per_gb", self.ms_per_usd_per_gb, 0.0, 1e9)?;
        check_range("default_usd_per_gb", self.default_usd_per_gb, 0.0, 1e6)?;
        for m in self.usd_per_gb.values() {
            for &p in m.values() {
                check_range("usd_per_gb", p, 0.0, 1e6)?;
            }
        }
        Ok(())
    }
}

/// Predicted quality of a path, for people: what a call on it would sound like.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Sum of the links' round-trip times, ms.
    pub rtt_ms: f64,
    /// Path loss ratio, `1 − Π(1 − loss_i)`.
    pub loss: f64,
    /// Path jitter, ms: the root of the sum of squares (independent links).
    pub jitter_ms: f64,
    /// E-model transmission rating, 0..=100.
    pub r_factor: f64,
    /// Mean opinion score, 1..=4.5.
    pub mos: f64,
}

/// Fixed delay added by codec framing and packetisation in the E-model, ms (20 ms frames).
const CODEC_DELAY_MS: f64 = 20.0;

impl Quality {
    /// Quality of a path from its links' metrics.
    pub fn of_path<'a>(links: impl IntoIterator<Item = &'a LinkMetrics>) -> Quality {
        let (mut rtt, mut delivered, mut jitter_sq) = (0.0, 1.0, 0.0);
        for m in links {
            rtt += m.rtt_ms;
            delivered *= 1.0 - m.loss.clamp(0.0, 1.0);
            jitter_sq += m.jitter_ms * m.jitter_ms;
        }
        Quality::from_totals(rtt, 1.0 - delivered, jitter_sq.sqrt())
    }

    /// Quality from path totals, with the simplified G.107 E-model (Cole & Rosenbluth):
    /// mouth-to-ear delay `d = rtt/2 + 2·jitter (buffer) + codec`;
    /// `Id = 0.024·d + 0.11·(d − 177.3)·H(d − 177.3)`;
    /// `Ie_eff = Ie + (95 − Ie)·Ppl/(Ppl + Bpl)` for G.711 with packet-loss concealment
    /// (`Ie = 0`, `Bpl = 25.1`, random loss); `R = 93.2 − Id − Ie_eff`.
    pub fn from_totals(rtt_ms: f64, loss: f64, jitter_ms: f64) -> Quality {
        let d = rtt_ms / 2.0 + 2.0 * jitter_ms + CODEC_DELAY_MS;
        let id = 0.024 * d + if d > 177.3 { 0.11 * (d - 177.3) } else { 0.0 };
        let ppl = loss.clamp(0.0, 1.0) * 100.0;
        let ie_eff = 95.0 * ppl / (ppl + 25.1);
        let r = (93.2 - id - ie_eff).clamp(0.0, 100.0);
        Quality {
            rtt_ms,
            loss,
            jitter_ms,
            r_factor: r,
            mos: mos_from_r(r),
        }
    }
}

/// G.107 mapping from R-factor to MOS.
pub fn mos_from_r(r: f64) -> f64 {
    if r <= 0.0 {
        1.0
    } else if r >= 100.0 {
        4.5
    } else {
        1.0 + 0.035 * r + r * (r - 60.0) * (100.0 - r) * 7.0e-6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_is_half_rtt_on_a_clean_link() {
        let w = CostWeights::default();
        assert!((w.link_cost(&LinkMetrics::rtt(80.0)) - 40.0).abs() < 1e-9);
    }

    #[test]
    fn loss_terms_compose_like_delivery_probabilities() {
        let w = CostWeights {
            w_jitter: 0.0,
            w_loss_ms: 1.0,
            relay_penalty_ms: 0.0,
            stale_penalty_ms: 0.0,
        };
        let l = |loss| {
            w.link_cost(&LinkMetrics {
                rtt_ms: 0.0,
                loss,
                jitter_ms: 0.0,
                loss_se: 0.0,
            })
        };
        // Two links of 10% loss deliver 81%: the sum of their costs is -ln(0.81).
        assert!((l(0.1) + l(0.1) - l(1.0 - 0.81)).abs() < 1e-9);
    }

    #[test]
    fn total_loss_has_a_finite_cost() {
        let w = CostWeights::default();
        let c = w.link_cost(&LinkMetrics {
            rtt_ms: 10.0,
            loss: 1.0,
            jitter_ms: 0.0,
            loss_se: 0.0,
        });
        assert!(c.is_finite() && c > 10_000.0);
    }

    #[test]
    fn zero_rtt_still_costs_something() {
        assert!(CostWeights::default().link_cost(&LinkMetrics::rtt(0.0)) >= MIN_LINK_COST);
    }

    #[test]
    fn mos_falls_with_delay_and_loss() {
        let good = Quality::from_totals(40.0, 0.0, 1.0);
        let far = Quality::from_totals(400.0, 0.0, 1.0);
        let lossy = Quality::from_totals(40.0, 0.05, 1.0);
        assert!(good.mos > 4.3 && good.mos <= 4.5, "{good:?}");
        assert!(far.mos < good.mos && lossy.mos < good.mos);
        assert!(lossy.mos < 4.0, "{lossy:?}");
    }

    #[test]
    fn path_quality_composes_links() {
        let a = LinkMetrics {
            rtt_ms: 100.0,
            loss: 0.1,
            jitter_ms: 3.0,
            loss_se: 0.0,
        };
        let b = LinkMetrics {
            rtt_ms: 50.0,
            loss: 0.1,
            jitter_ms: 4.0,
            loss_se: 0.0,
        };
        let q = Quality::of_path([&a, &b]);
        assert!((q.rtt_ms - 150.0).abs() < 1e-9);
        assert!((q.loss - 0.19).abs() < 1e-9);
        assert!((q.jitter_ms - 5.0).abs() < 1e-9);
    }

    #[test]
    fn prices_turn_into_milliseconds() {
        let mut p = PriceBook {
            ms_per_usd_per_gb: 100.0,
            ..Default::default()
        };
        p.usd_per_gb
            .entry("aws".into())
            .or_default()
            .insert("gcp".into(), 0.09);
        assert!((p.cost_ms("aws", "gcp") - 9.0).abs() < 1e-9);
        assert_eq!(p.cost_ms("gcp", "aws"), 0.0);
    }

    #[test]
    fn invalid_metrics_are_refused() {
        assert!(
            LinkMetrics {
                rtt_ms: f64::NAN,
                loss: 0.0,
                jitter_ms: 0.0,
                loss_se: 0.0,
            }
            .validate()
            .is_err()
        );
        assert!(
            LinkMetrics {
                rtt_ms: 10.0,
                loss: 1.5,
                jitter_ms: 0.0,
                loss_se: 0.0,
            }
            .validate()
            .is_err()
        );
        assert!(
            LinkMetrics {
                rtt_ms: -1.0,
                loss: 0.0,
                jitter_ms: 0.0,
                loss_se: 0.0,
            }
            .validate()
            .is_err()
        );
        assert!(LinkMetrics::rtt(10.0).validate().is_ok());
    }
}
