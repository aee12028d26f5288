//! What one direction of an emulated link does to packets.

use std::time::Duration;

use crate::error::WanError;

/// The shape of the jitter added to each packet's delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JitterDist {
    /// Uniform in `−jitter..=+jitter`.
    #[default]
    Uniform,
    /// Normal with standard deviation `jitter` (tails cut at ±4σ).
    Normal,
}

/// Gilbert–Elliott burst loss: a two-state Markov chain, one step per packet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// Probability of moving from the good to the bad state, per packet.
    pub p_good_to_bad: f64,
    /// Probability of moving from the bad to the good state, per packet (mean burst length is
    /// its inverse).
    pub p_bad_to_good: f64,
    /// Loss probability in the good state.
    pub loss_good: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// Long-run loss ratio: the stationary mix of the two states' losses.
    pub fn mean_loss(&self) -> f64 {
        let total = self.p_good_to_bad + self.p_bad_to_good;
        if total == 0.0 {
            return self.loss_good;
        }
        let bad = self.p_good_to_bad / total;
        (1.0 - bad) * self.loss_good + bad * self.loss_bad
    }
}

/// One direction of an emulated link. `Default` is a perfect wire: no delay, no loss.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LinkParams {
    /// One-way base delay.
    pub delay: Duration,
    /// Jitter amplitude (see [`JitterDist`]); the total delay never goes below zero.
    pub jitter: Duration,
    /// Jitter distribution.
    pub jitter_dist: JitterDist,
    /// Keep packets in order even when jitter would reorder them (as a real queue would).
    /// Default `false`: jitter reorders, as on a path with parallel links.
    pub keep_order: bool,
    /// Independent random loss probability, 0..=1 (ignored when `burst` is set).
    pub loss: f64,
    /// Burst loss model; replaces `loss` when set.
    pub burst: Option<GilbertElliott>,
    /// Drop everything.
    pub blackhole: bool,
    /// Serialisation rate in bits per second; `None` is unlimited.
    pub rate_bps: Option<u64>,
    /// Bytes that may wait for the rate limiter before tail drop. Default 0 means 64 KiB.
    pub queue_bytes: usize,
}

impl LinkParams {
    /// A clean link with this one-way delay.
    pub fn delay(delay: Duration) -> Self {
        LinkParams {
            delay,
            ..Default::default()
        }
    }

    /// Refuses probabilities outside 0..=1, a zero rate and delays over an hour.
    pub fn validate(&self) -> Result<(), WanError> {
        let prob = |field: &'static str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(WanError::InvalidParams {
                    field,
                    detail: format!("{v} is not a probability"),
                })
            }
        };
        prob("loss", self.loss)?;
        if let Some(b) = &self.burst {
            prob("p_good_to_bad", b.p_good_to_bad)?;
            prob("p_bad_to_good", b.p_bad_to_good)?;
            prob("loss_good", b.loss_good)?;
            prob("loss_bad", b.loss_bad)?;
        }
        if self.rate_bps == Some(0) {
            return Err(WanError::InvalidParams {
                field: "rate_bps",
                detail: "0 (use blackhole to stop traffic)".into(),
            });
        }
        let hour = Duration::from_secs(3600);
        if self.delay > hour || self.jitter > hour {
            return Err(WanError::InvalidParams {
                field: "delay",
                detail: "over an hour".into(),
            });
        }
        Ok(())
    }

    pub(crate) fn queue_limit(&self) -> usize {
        if self.queue_bytes == 0 {
            64 * 1024
        } else {
            self.queue_bytes
        }
    }
}
