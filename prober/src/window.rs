//! Windows: what one peer's probes measured over a period (default 1 s).
//!
//! A window counts what was *resolved* in it: replies received (with their RTT), probes found
//! lost (skipped by later probes' echoes, or `loss_timeout` after sending), replies that came
//! after that (late),
//! duplicates and reordered replies. RTTs go into an HDR histogram at microsecond resolution;
//! jitter is RFC 3550's interarrival jitter over consecutive RTT samples, carried across
//! windows; the loss ratio comes with a Wilson 95% confidence interval so that a consumer can
//! tell 1 lost of 10 from 100 lost of 1,000.

use hdrhistogram::Histogram;

/// One closed window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowReport {
    /// Probes sent in the window.
    pub sent: u32,
    /// Replies received in time.
    pub received: u32,
    /// Probes found lost: skipped by later probes' echoes, or past their loss timeout.
    pub lost: u32,
    /// Replies that arrived after their timeout (already counted lost).
    pub late: u32,
    /// Replies older than one already received.
    pub reordered: u32,
    /// Replies received twice: the peer's second copy of a backlog's echoes (see
    /// `session::REPEAT_FROM`), or a peer that echoes more than it should.
    pub duplicates: u32,
    /// RTT percentiles in ms (all zero without replies): min, p50, p90, p99, max.
    pub rtt_ms: [f64; 5],
    /// RFC 3550 jitter over RTT samples, ms.
    pub jitter_ms: f64,
    /// `lost / (received + lost)`; 0 when nothing resolved.
    pub loss: f64,
    /// Wilson 95% interval of the loss ratio.
    pub loss_ci: (f64, f64),
}

/// Accumulates one peer's window.
#[derive(Debug, Clone)]
pub struct Window {
    sent: u32,
    received: u32,
    lost: u32,
    late: u32,
    reordered: u32,
    duplicates: u32,
    /// Probe intervals that passed with no connection.
    unsendable: u32,
    rtt_us: Histogram<u32>,
    jitter_ms: f64,
    last_rtt_ms: Option<f64>,
    /// Round trips set aside (see [`Window::received_across_stall`]), µs: the window's RTT
    /// only when it has no other, at most [`SET_ASIDE_MAX`] of them.
    set_aside_us: Vec<u64>,
}

/// The most round trips a window keeps set aside: a stall holds up the echoes of one round
/// trip or two, tens at a burst's rate; any beyond say nothing more.
const SET_ASIDE_MAX: usize = 64;

impl Default for Window {
    fn default() -> Self {
        Window {
            sent: 0,
            received: 0,
            lost: 0,
            late: 0,
            reordered: 0,
            duplicates: 0,
            unsendable: 0,
            // 1 µs to 60 s at 3 significant digits: sub-microsecond error is not measurable here.
            rtt_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid"),
            jitter_ms: 0.0,
            last_rtt_ms: None,
            set_aside_us: Vec::new(),
        }
    }
}

/// Wilson score interval for `k` successes in `n` trials at 95%.
pub fn wilson(k: u32, n: u32) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k.min(n), n);
    let (nf, p) = (f64::from(n), f64::from(k) / f64::from(n));
    let z = 1.959_963_984_540_054_f64;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * nf)) / (1.0 + z2 / nf);
    let half = z * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt() / (1.0 + z2 / nf);
    // At the edges the bounds are exact (0 losses: the lower bound is 0, not a rounding error).
    let lo = if k == 0 { 0.0 } else { (centre - half).max(0.0) };
    let hi = if k == n { 1.0 } else { (centre + half).min(1.0) };
    (lo, hi)
}

impl Window {
    /// A probe was sent.
    pub fn sent(&mut self) {
        self.sent += 1;
    }

    /// A probe timed out.
    pub fn lost(&mut self) {
        self.lost += 1;
    }

    /// A reply came after its probe's timeout.
    pub fn late(&mut self) {
        self.late += 1;
    }

    /// A reply came twice.
    pub fn duplicate(&mut self) {
        self.duplicates += 1;
    }

    /// A reply came after a newer one.
    pub fn reordered(&mut self) {
        self.reordered += 1;
    }

    /// A reply in time, with its round trip in nanoseconds.
    pub fn received(&mut self, rtt_ns: u64) {
        self.received += 1;
        self.rtt_us.saturating_record((rtt_ns / 1_000).max(1));
        let rtt_ms = rtt_ns as f64 / 1e6;
        if let Some(prev) = self.last_rtt_ms {
            // RFC 3550 §6.4.1: J += (|D| − J) / 16.
            self.jitter_ms += ((rtt_ms - prev).abs() - self.jitter_ms) / 16.0;
        }
        self.last_rtt_ms = Some(rtt_ms);
    }

    /// A reply in time whose round trip spanned a stall of this prober's host: it counts as
    /// received, but its RTT measured the host (the echo waited to be read) and stays out of
    /// the percentiles and the jitter, unless the window has no other round trip to report.
    /// Without this, a 150 ms stall of a prober's host read as jitter on every link it probes
    /// and moved pairs off them all at once.
    pub fn received_across_stall(&mut self, rtt_ns: u64) {
        self.received += 1;
        if self.set_aside_us.len() < SET_ASIDE_MAX {
            self.set_aside_us.push((rtt_ns / 1_000).max(1));
        }
    }

    /// A probe interval passed with no connection to send on.
    pub fn unsendable(&mut self) {
        self.unsendable += 1;
    }

    /// Closes the window: returns its report and starts the next (jitter carries over).
    ///
    /// Intervals without a connection count as sent and lost only in a window that got no reply
    /// at all: a dead link reads as 100% loss, while the window in which a connection comes up
    /// is judged on the probes actually sent (its dead intervals say nothing of the link).
    pub fn close(&mut self) -> WindowReport {
        if self.received == 0 {
            self.sent += self.unsendable;
            self.lost += self.unsendable;
        }
        self.unsendable = 0;
        if self.rtt_us.is_empty() {
            for &us in &self.set_aside_us {
                self.rtt_us.saturating_record(us);
            }
        }
        self.set_aside_us.clear();
        let h = &self.rtt_us;
        let ms = |us: u64| us as f64 / 1_000.0;
        // A quantile is read as the middle of its bucket: `value_at_quantile` gives the top,
        // which reads every round trip long by up to a bucket (3 significant figures: 64 µs
        // at 100 ms, 256 µs at 300 ms).
        let q = |x: f64| ms(h.median_equivalent(h.value_at_quantile(x)));
        let rtt_ms = if h.is_empty() {
            [0.0; 5]
        } else {
            [ms(h.min()), q(0.5), q(0.9), q(0.99), ms(h.max())]
        };
        let resolved = self.received + self.lost;
        let report = WindowReport {
            sent: self.sent,
            received: self.received,
            lost: self.lost,
            late: self.late,
            reordered: self.reordered,
            duplicates: self.duplicates,
            rtt_ms,
            jitter_ms: self.jitter_ms,
            loss: if resolved == 0 {
                0.0
            } else {
                f64::from(self.lost) / f64::from(resolved)
            },
            loss_ci: wilson(self.lost, resolved),
        };
        // Jitter and the last RTT carry over; the histogram keeps its allocation.
        self.rtt_us.reset();
        (
            self.sent,
            self.received,
            self.lost,
            self.late,
            self.reordered,
            self.duplicates,
        ) = (0, 0, 0, 0, 0, 0);
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_across_a_stall_are_received_but_measured_only_when_alone() {
        let mut w = Window::default();
        for _ in 0..9 {
            w.received(100_000_000);
        }
        w.received_across_stall(250_000_000);
        let r = w.close();
        assert_eq!((r.received, r.lost), (10, 0));
        assert!((r.rtt_ms[4] - 100.0).abs() < 0.1, "{:?}", r.rtt_ms);
        assert_eq!(r.jitter_ms, 0.0);
        // The next sample is compared with the last measured one, not the stalled one.
        w.received(100_000_000);
        assert_eq!(w.close().jitter_ms, 0.0);
        // A window of stalled round trips alone still reports them.
        w.received_across_stall(180_000_000);
        w.received_across_stall(120_000_000);
        let r = w.close();
        assert_eq!(r.received, 2);
        assert!(
            (r.rtt_ms[0] - 120.0).abs() < 0.1 && (r.rtt_ms[4] - 180.0).abs() < 0.2,
            "{:?}",
            r.rtt_ms
        );
        assert_eq!(r.jitter_ms, 0.0);
        // Set aside for one window only.
        w.received(100_000_000);
        assert!((w.close().rtt_ms[4] - 100.0).abs() < 0.1);
    }

    #[test]
    fn percentiles_come_from_the_samples_at_microsecond_resolution() {
        let mut w = Window::default();
        for i in 1..=100u64 {
            w.received(i * 1_000_000 + 250_000); // 1.25 ms .. 100.25 ms
        }
        let r = w.close();
        assert_eq!(r.received, 100);
        assert!((r.rtt_ms[0] - 1.25).abs() < 0.01, "{:?}", r.rtt_ms);
        assert!((r.rtt_ms[1] - 50.25).abs() < 0.1, "{:?}", r.rtt_ms);
        assert!((r.rtt_ms[3] - 99.25).abs() < 0.1, "{:?}", r.rtt_ms);
        assert!((r.rtt_ms[4] - 100.25).abs() < 0.1, "{:?}", r.rtt_ms);
        // The next window starts empty.
        assert_eq!(w.close().received, 0);
    }

    #[test]
    fn long_round_trips_are_not_read_long() {
        // 2,000 windows of ten samples spread over 250.000–252.000 ms: the median of each
        // window must come out unbiased, not at the top of its 256 µs bucket.
        let mut w = Window::default();
        let mut x = 12_345u64;
        let mut bias = 0.0;
        for _ in 0..2_000 {
            let mut v: Vec<u64> = (0..10)
                .map(|_| {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    250_000_000 + (x >> 33) % 2_000_000
                })
                .collect();
            for &ns in &v {
                w.received(ns);
            }
            v.sort_unstable();
            // The quantile the histogram reads is the fifth of ten.
            bias += w.close().rtt_ms[1] - v[4] as f64 / 1e6;
        }
        let bias = bias / 2_000.0;
        assert!(bias.abs() < 0.03, "p50 reads {bias:+.3} ms off on average");
    }

    #[test]
    fn jitter_follows_rfc3550_and_is_zero_on_a_steady_link() {
        let mut w = Window::default();
        for _ in 0..50 {
            w.received(40_000_000);
        }
        assert_eq!(w.close().jitter_ms, 0.0);
        // Alternating 40/42 ms: |D| = 2 ms every sample, J converges to 2.
        for i in 0..500 {
            w.received(if i % 2 == 0 { 40_000_000 } else { 42_000_000 });
        }
        assert!((w.close().jitter_ms - 2.0).abs() < 0.01);
    }

    #[test]
    fn the_loss_interval_covers_the_truth_and_narrows_with_samples() {
        let (lo, hi) = wilson(10, 100);
        assert!(lo < 0.1 && hi > 0.1 && lo > 0.04 && hi < 0.18, "{lo} {hi}");
        let (lo2, hi2) = wilson(100, 1000);
        assert!(hi2 - lo2 < (hi - lo) / 2.0);
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        let (lo0, hi0) = wilson(0, 50);
        assert!(lo0 == 0.0 && hi0 > 0.0 && hi0 < 0.1);
    }

    #[test]
    fn counts_are_reported_and_reset() {
        let mut w = Window::default();
        for _ in 0..10 {
            w.sent();
        }
        w.lost();
        w.late();
        w.duplicate();
        w.reordered();
        w.received(5_000_000);
        let r = w.close();
        assert_eq!(
            (r.sent, r.received, r.lost, r.late, r.duplicates, r.reordered),
            (10, 1, 1, 1, 1, 1)
        );
        assert!((r.loss - 0.5).abs() < 1e-12);
        let r = w.close();
        assert_eq!((r.sent, r.lost), (0, 0));
    }
}
