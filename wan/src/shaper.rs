//! The fate of each packet on one direction of a link: dropped, or delivered at an instant.
//!
//! Pure and deterministic: time comes in as a parameter and randomness from a seeded
//! generator, so every behaviour (loss rates, bursts, rate limiting, ordering) is tested
//! without sockets or clocks.

use std::time::{Duration, Instant};

use crate::params::{JitterDist, LinkParams};

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Random or burst loss.
    Loss,
    /// The link is blackholed.
    Blackhole,
    /// The rate limiter's queue is full.
    Queue,
}

/// What happens to one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Send it on at this instant.
    Deliver(Instant),
    /// Drop it.
    Drop(DropReason),
}

/// A small, fast, seeded generator (xoshiro256++); statistical quality is ample for loss and
/// jitter, and a seed makes a run reproducible.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    /// A generator from a seed (expanded with splitmix64).
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    fn normal(&mut self) -> f64 {
        // Box–Muller; 1 − u keeps the logarithm finite.
        let (u, v) = (1.0 - self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// The state of one direction: parameters, burst-loss state, rate-limiter clock, ordering.
#[derive(Debug, Clone)]
pub struct Shaper {
    params: LinkParams,
    rng: Rng,
    in_burst: bool,
    /// When the rate limiter's link is free again.
    busy_until: Option<Instant>,
    /// The latest delivery instant handed out (for `keep_order`).
    last_delivery: Option<Instant>,
}

impl Shaper {
    /// A shaper with these parameters and this seed.
    pub fn new(params: LinkParams, seed: u64) -> Self {
        Shaper {
            params,
            rng: Rng::new(seed),
            in_burst: false,
            busy_until: None,
            last_delivery: None,
        }
    }

    /// The parameters in force.
    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// Changes the parameters; packets already scheduled keep their fate.
    pub fn set(&mut self, params: LinkParams) {
        if params.burst.is_none() {
            self.in_burst = false;
        }
        self.params = params;
    }

    /// Decides the fate of a packet of `len` bytes arriving at `now`.
    pub fn admit(&mut self, len: usize, now: Instant) -> Fate {
        let p = &self.params;
        if p.blackhole {
            return Fate::Drop(DropReason::Blackhole);
        }
        let lost = match p.burst {
            Some(ge) => {
                // Step the chain, then draw the loss of the state we are in.
                self.in_burst = if self.in_burst {
                    !self.rng.chance(ge.p_bad_to_good)
                } else {
                    self.rng.chance(ge.p_good_to_bad)
                };
                self.rng
                    .chance(if self.in_burst { ge.loss_bad } else { ge.loss_good })
            }
            None => self.rng.chance(p.loss),
        };
        if lost {
            return Fate::Drop(DropReason::Loss);
        }
        // Rate limiting: the packet waits for the link, then takes its serialisation time.
        let mut ready = now;
        if let Some(rate) = p.rate_bps {
            let start = self.busy_until.filter(|&t| t > now).unwrap_or(now);
            let backlog_bits = start.saturating_duration_since(now).as_secs_f64() * rate as f64;
            if backlog_bits / 8.0 + len as f64 > p.queue_limit() as f64 {
                return Fate::Drop(DropReason::Queue);
            }
            ready = start + Duration::from_secs_f64(len as f64 * 8.0 / rate as f64);
            self.busy_until = Some(ready);
        }
        let jitter_s = p.jitter.as_secs_f64();
        let offset = match p.jitter_dist {
            JitterDist::Uniform => (self.rng.unit() * 2.0 - 1.0) * jitter_s,
            JitterDist::Normal => self.rng.normal().clamp(-4.0, 4.0) * jitter_s,
        };
        let delay = (p.delay.as_secs_f64() + offset).max(0.0);
        let mut at = ready + Duration::from_secs_f64(delay);
        if p.keep_order
            && let Some(last) = self.last_delivery
        {
            at = at.max(last);
        }
        self.last_delivery = Some(self.last_delivery.map_or(at, |l| l.max(at)));
        Fate::Deliver(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::GilbertElliott;

    fn run(params: LinkParams, n: usize) -> Vec<Fate> {
        let mut s = Shaper::new(params, 42);
        let t0 = Instant::now();
        (0..n)
            .map(|i| s.admit(100, t0 + Duration::from_micros(i as u64 * 100)))
            .collect()
    }

    fn loss_ratio(f: &[Fate]) -> f64 {
        f.iter()
            .filter(|x| matches!(x, Fate::Drop(DropReason::Loss)))
            .count() as f64
            / f.len() as f64
    }

    #[test]
    fn a_perfect_wire_delivers_everything_at_once() {
        let mut s = Shaper::new(LinkParams::default(), 1);
        let t = Instant::now();
        assert_eq!(s.admit(1200, t), Fate::Deliver(t));
    }

    #[test]
    fn random_loss_matches_its_probability() {
        let f = run(
            LinkParams {
                loss: 0.05,
                ..Default::default()
            },
            200_000,
        );
        // 5% of 200k: σ ≈ 0.05%; allow 5σ.
        assert!((loss_ratio(&f) - 0.05).abs() < 0.0025, "{}", loss_ratio(&f));
    }

    #[test]
    fn burst_loss_has_its_mean_and_its_bursts() {
        let ge = GilbertElliott {
            p_good_to_bad: 0.01,
            p_bad_to_good: 0.25,
            loss_good: 0.0,
            loss_bad: 0.8,
        };
        let f = run(
            LinkParams {
                burst: Some(ge),
                ..Default::default()
            },
            400_000,
        );
        let mean = ge.mean_loss();
        assert!(
            (loss_ratio(&f) - mean).abs() < 0.1 * mean,
            "{} vs {mean}",
            loss_ratio(&f)
        );
        // Losses cluster: the chance that a loss follows a loss is far above the mean.
        let lost: Vec<bool> = f.iter().map(|x| matches!(x, Fate::Drop(_))).collect();
        let pairs = lost.windows(2).filter(|w| w[0]).count();
        let both = lost.windows(2).filter(|w| w[0] && w[1]).count();
        assert!(both as f64 / pairs as f64 > 0.5, "losses do not cluster");
    }

    #[test]
    fn blackhole_drops_everything_and_lifts() {
        let mut s = Shaper::new(
            LinkParams {
                blackhole: true,
                ..Default::default()
            },
            1,
        );
        let t = Instant::now();
        assert_eq!(s.admit(10, t), Fate::Drop(DropReason::Blackhole));
        s.set(LinkParams::default());
        assert_eq!(s.admit(10, t), Fate::Deliver(t));
    }

    #[test]
    fn delay_and_uniform_jitter_stay_in_bounds() {
        let d = Duration::from_millis(40);
        let j = Duration::from_millis(5);
        let mut s = Shaper::new(
            LinkParams {
                delay: d,
                jitter: j,
                ..Default::default()
            },
            3,
        );
        let t = Instant::now();
        let mut seen = (Duration::MAX, Duration::ZERO);
        for _ in 0..10_000 {
            let Fate::Deliver(at) = s.admit(10, t) else {
                panic!("no loss configured")
            };
            let x = at - t;
            seen = (seen.0.min(x), seen.1.max(x));
        }
        assert!(seen.0 >= d - j && seen.1 <= d + j, "{seen:?}");
        assert!(
            seen.0 < d - j / 2 && seen.1 > d + j / 2,
            "jitter not spread: {seen:?}"
        );
    }

    #[test]
    fn keep_order_never_reorders() {
        let p = LinkParams {
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(8),
            jitter_dist: JitterDist::Normal,
            keep_order: true,
            ..Default::default()
        };
        let f = run(p, 10_000);
        let times: Vec<Instant> = f
            .iter()
            .map(|x| match x {
                Fate::Deliver(t) => *t,
                Fate::Drop(_) => panic!("no loss configured"),
            })
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_rate_limit_spaces_packets_and_tail_drops() {
        // 1 Mbit/s: a 1000-byte packet takes 8 ms; the queue holds 4000 bytes.
        let p = LinkParams {
            rate_bps: Some(1_000_000),
            queue_bytes: 4000,
            ..Default::default()
        };
        let mut s = Shaper::new(p, 1);
        let t = Instant::now();
        let fates: Vec<Fate> = (0..8).map(|_| s.admit(1000, t)).collect();
        let delivered: Vec<Duration> = fates
            .iter()
            .filter_map(|f| match f {
                Fate::Deliver(at) => Some(*at - t),
                Fate::Drop(_) => None,
            })
            .collect();
        assert_eq!(delivered.len(), 4, "{fates:?}");
        for (i, d) in delivered.iter().enumerate() {
            let want = Duration::from_millis(8 * (i as u64 + 1));
            assert!(d.abs_diff(want) < Duration::from_micros(1), "{d:?} vs {want:?}");
        }
        assert!(fates[4..].iter().all(|f| *f == Fate::Drop(DropReason::Queue)));
    }
}
