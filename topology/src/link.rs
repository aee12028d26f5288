//! Link state: from raw probe windows to a smoothed view with a health verdict.
//!
//! Two speeds meet here. Quality (RTT, loss, jitter) is smoothed over windows so that noise does
//! not move routes; liveness events from the prober (`LinkDown`/`LinkUp`) override the smoothed
//! state at once, because an outage must not wait for a window. Time is always a parameter.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::cost::{LinkMetrics, check_range};
use crate::error::TopologyError;

/// Milliseconds since the Unix epoch; the engine never reads a clock itself.
pub type TimestampMs = u64;

/// One prober window for one directed link, as the prober reports it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkWindow {
    /// End of the window.
    pub end_ms: TimestampMs,
    /// Probes sent in the window.
    pub sent: u32,
    /// Replies received in the window.
    pub received: u32,
    /// RTT median, ms (meaningless when `received == 0`).
    pub rtt_p50_ms: f64,
    /// RTT 90th percentile, ms.
    pub rtt_p90_ms: f64,
    /// RTT 99th percentile, ms.
    pub rtt_p99_ms: f64,
    /// RFC 3550 interarrival jitter over the window's RTT samples, ms.
    pub jitter_ms: f64,
}

impl LinkWindow {
    /// Loss ratio of the window (0 when nothing was sent).
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            1.0 - f64::from(self.received.min(self.sent)) / f64::from(self.sent)
        }
    }

    /// Refuses windows that must never reach the link state: NaN, negative or absurd values,
    /// more replies than probes, unordered percentiles, and ends far in the future.
    pub fn validate(&self, now: TimestampMs, max_future_ms: u64) -> Result<(), TopologyError> {
        if self.received > self.sent {
            return Err(TopologyError::InvalidValue {
                field: "received",
                detail: format!("{} replies for {} probes", self.received, self.sent),
            });
        }
        if self.end_ms > now.saturating_add(max_future_ms) {
            return Err(TopologyError::InvalidValue {
                field: "end_ms",
                detail: format!("{} is more than {max_future_ms} ms in the future", self.end_ms),
            });
        }
        if self.received > 0 {
            check_range("rtt_p50_ms", self.rtt_p50_ms, 0.0, 10_000.0)?;
            check_range("rtt_p90_ms", self.rtt_p90_ms, self.rtt_p50_ms, 10_000.0)?;
            check_range("rtt_p99_ms", self.rtt_p99_ms, self.rtt_p90_ms, 10_000.0)?;
            check_range("jitter_ms", self.jitter_ms, 0.0, 10_000.0)?;
        }
        Ok(())
    }
}

/// The prober's fast verdict, sent the moment a run of misses starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveness {
    /// A run of consecutive probes went unanswered past the adaptive deadline.
    Down,
    /// Replies are back.
    Up,
}

/// The health verdict of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkHealth {
    /// Usable, within thresholds.
    Up,
    /// Usable, but loss or jitter is past its threshold; a path on it is switched away from.
    Degraded,
    /// Not usable: no replies for `down_after` windows, or a `LinkDown` event.
    Down,
    /// No report for `stale_after_ms`: the last metrics are kept, with a cost penalty.
    Stale,
}

impl LinkHealth {
    /// Whether a path may use a link in this state.
    pub fn usable(self) -> bool {
        !matches!(self, LinkHealth::Down)
    }
}

/// How windows become link state. Durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkStateConfig {
    /// Weight of the newest window in the moving averages, 0..1. Default 0.3: a step change is
    /// 90% visible after 6 windows, a single noisy window moves the average by 30%.
    pub ewma_alpha: f64,
    /// Consecutive windows without a reply before a link is down. Default 2.
    pub down_after: u32,
    /// Age of the last window after which a link is stale, ms. Default 5000.
    pub stale_after_ms: u64,
    /// Smoothed loss ratio at or above which a link is degraded. Default 0.02.
    pub degraded_loss: f64,
    /// Smoothed jitter at or above which a link is degraded, ms. Default 30.
    pub degraded_jitter_ms: f64,
    /// Windows kept in the short history (for `explain` and dashboards). Default 10.
    pub history: usize,
    /// How far in the future a window's end may be before it is refused, ms. Default 5000.
    pub max_future_ms: u64,
}

impl Default for LinkStateConfig {
    fn default() -> Self {
        LinkStateConfig {
            ewma_alpha: 0.3,
            down_after: 2,
            stale_after_ms: 5000,
            degraded_loss: 0.02,
            degraded_jitter_ms: 30.0,
            history: 10,
            max_future_ms: 5000,
        }
    }
}

impl LinkStateConfig {
    /// Refuses values that would make the estimator meaningless.
    pub fn validate(&self) -> Result<(), TopologyError> {
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            return Err(TopologyError::InvalidValue {
                field: "ewma_alpha",
                detail: format!("{} (must be within 0 exclusive ..= 1)", self.ewma_alpha),
            });
        }
        if self.down_after == 0 {
            return Err(TopologyError::InvalidValue {
                field: "down_after",
                detail: "0 (must be at least 1)".into(),
            });
        }
        check_range("degraded_loss", self.degraded_loss, 0.0, 1.0)?;
        check_range("degraded_jitter_ms", self.degraded_jitter_ms, 0.0, 1e6)
    }
}

/// A link's metrics and verdict at one moment: what the path search reads.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkView {
    /// Smoothed metrics.
    pub metrics: LinkMetrics,
    /// Health verdict.
    pub health: LinkHealth,
}

/// The smoothed state of one directed link, fed by windows and liveness events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkState {
    smoothed: Option<LinkMetrics>,
    last_window_end: Option<TimestampMs>,
    empty_run: u32,
    liveness_down: bool,
    history: VecDeque<LinkWindow>,
}

impl LinkState {
    /// Folds one window in. Windows older than the newest one seen are refused as replays.
    /// A window without replies counts towards `down_after` but does not move the averages,
    /// so a link that comes back is judged on what it was, not on its outage.
    pub fn observe(&mut self, w: &LinkWindow, cfg: &LinkStateConfig) -> Result<(), TopologyError> {
        if let Some(last) = self.last_window_end
            && w.end_ms <= last
        {
            return Err(TopologyError::InvalidValue {
                field: "end_ms",
                detail: format!("{} is not after the last window ({last}): replay", w.end_ms),
            });
        }
        self.last_window_end = Some(w.end_ms);
        while self.history.len() >= cfg.history.max(1) {
            self.history.pop_front();
        }
        self.history.push_back(*w);
        if w.received == 0 {
            if w.sent > 0 {
                self.empty_run = self.empty_run.saturating_add(1);
            }
            return Ok(());
        }
        self.empty_run = 0;
        let sample = LinkMetrics {
            rtt_ms: w.rtt_p50_ms,
            loss: w.loss(),
            jitter_ms: w.jitter_ms,
        };
        let a = cfg.ewma_alpha;
        self.smoothed = Some(match self.smoothed {
            None => sample,
            Some(s) => LinkMetrics {
                rtt_ms: s.rtt_ms + a * (sample.rtt_ms - s.rtt_ms),
                loss: s.loss + a * (sample.loss - s.loss),
                jitter_ms: s.jitter_ms + a * (sample.jitter_ms - s.jitter_ms),
            },
        });
        Ok(())
    }

    /// Applies a liveness event at once: `Down` makes the link unusable until `Up`.
    pub fn liveness(&mut self, event: Liveness) {
        match event {
            Liveness::Down => self.liveness_down = true,
            Liveness::Up => {
                self.liveness_down = false;
                self.empty_run = 0;
            }
        }
    }

    /// The health verdict at `now`.
    pub fn health(&self, now: TimestampMs, cfg: &LinkStateConfig) -> LinkHealth {
        if self.liveness_down || self.empty_run >= cfg.down_after {
            return LinkHealth::Down;
        }
        let fresh = self
            .last_window_end
            .is_some_and(|t| now.saturating_sub(t) < cfg.stale_after_ms);
        match self.smoothed {
            None => LinkHealth::Down,
            Some(_) if !fresh => LinkHealth::Stale,
            Some(m) if m.loss >= cfg.degraded_loss || m.jitter_ms >= cfg.degraded_jitter_ms => {
                LinkHealth::Degraded
            }
            Some(_) => LinkHealth::Up,
        }
    }

    /// Metrics and verdict at `now`; `None` until a window with replies has been seen.
    pub fn view(&self, now: TimestampMs, cfg: &LinkStateConfig) -> Option<LinkView> {
        self.smoothed.map(|metrics| LinkView {
            metrics,
            health: self.health(now, cfg),
        })
    }

    /// The last windows, oldest first.
    pub fn history(&self) -> impl Iterator<Item = &LinkWindow> {
        self.history.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(end_ms: u64, sent: u32, received: u32, rtt: f64) -> LinkWindow {
        LinkWindow {
            end_ms,
            sent,
            received,
            rtt_p50_ms: rtt,
            rtt_p90_ms: rtt,
            rtt_p99_ms: rtt,
            jitter_ms: 1.0,
        }
    }

    #[test]
    fn smoothing_follows_a_step_change() {
        let cfg = LinkStateConfig::default();
        let mut s = LinkState::default();
        s.observe(&window(1000, 10, 10, 100.0), &cfg).unwrap();
        for i in 2..=10 {
            s.observe(&window(i * 1000, 10, 10, 200.0), &cfg).unwrap();
        }
        let v = s.view(10_000, &cfg).unwrap();
        assert!(v.metrics.rtt_ms > 190.0 && v.metrics.rtt_ms < 200.0, "{v:?}");
        assert_eq!(v.health, LinkHealth::Up);
    }

    #[test]
    fn empty_windows_make_a_link_down_after_the_configured_count() {
        let cfg = LinkStateConfig::default();
        let mut s = LinkState::default();
        s.observe(&window(1000, 10, 10, 50.0), &cfg).unwrap();
        s.observe(&window(2000, 10, 0, 0.0), &cfg).unwrap();
        assert_eq!(s.health(2000, &cfg), LinkHealth::Up);
        s.observe(&window(3000, 10, 0, 0.0), &cfg).unwrap();
        assert_eq!(s.health(3000, &cfg), LinkHealth::Down);
        s.observe(&window(4000, 10, 10, 50.0), &cfg).unwrap();
        assert_eq!(s.health(4000, &cfg), LinkHealth::Up);
        // The outage did not pollute the averages.
        assert_eq!(s.view(4000, &cfg).unwrap().metrics.loss, 0.0);
    }

    #[test]
    fn liveness_overrides_the_smoothed_state_at_once() {
        let cfg = LinkStateConfig::default();
        let mut s = LinkState::default();
        s.observe(&window(1000, 10, 10, 50.0), &cfg).unwrap();
        s.liveness(Liveness::Down);
        assert_eq!(s.health(1100, &cfg), LinkHealth::Down);
        s.liveness(Liveness::Up);
        assert_eq!(s.health(1200, &cfg), LinkHealth::Up);
    }

    #[test]
    fn silence_makes_a_link_stale_and_loss_degraded() {
        let cfg = LinkStateConfig::default();
        let mut s = LinkState::default();
        s.observe(&window(1000, 100, 90, 50.0), &cfg).unwrap();
        assert_eq!(s.health(1500, &cfg), LinkHealth::Degraded);
        assert_eq!(s.health(1000 + cfg.stale_after_ms, &cfg), LinkHealth::Stale);
    }

    #[test]
    fn replays_and_bad_windows_are_refused() {
        let cfg = LinkStateConfig::default();
        let mut s = LinkState::default();
        s.observe(&window(2000, 10, 10, 50.0), &cfg).unwrap();
        assert!(s.observe(&window(2000, 10, 10, 50.0), &cfg).is_err());
        assert!(s.observe(&window(1000, 10, 10, 50.0), &cfg).is_err());
        assert!(window(3000, 10, 11, 5.0).validate(3000, 5000).is_err());
        assert!(window(3000, 10, 10, f64::NAN).validate(3000, 5000).is_err());
        assert!(window(3000, 10, 10, -5.0).validate(3000, 5000).is_err());
        assert!(window(99_000, 10, 10, 5.0).validate(3000, 5000).is_err());
        assert!(window(3000, 10, 10, 5.0).validate(3000, 5000).is_ok());
    }

    #[test]
    fn history_is_bounded() {
        let cfg = LinkStateConfig {
            history: 3,
            ..Default::default()
        };
        let mut s = LinkState::default();
        for i in 1..=10 {
            s.observe(&window(i * 1000, 10, 10, 5.0), &cfg).unwrap();
        }
        let ends: Vec<u64> = s.history().map(|w| w.end_ms).collect();
        assert_eq!(ends, vec![8000, 9000, 10000]);
    }
}
