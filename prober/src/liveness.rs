//! Fast liveness: is the peer answering *right now*?
//!
//! Quality waits for windows; liveness must not. A probe counts as missed once its reply is
//! later than an adaptive deadline taken from the link's own RTTs (`factor × p99 + margin`), and
//! a run of consecutive misses declares the link down at once; a late answer to one of the
//! run's probes ends the run (the peer is slower than it was, not gone). The run length comes
//! from the link's measured miss rate `p`: the smallest `k` with `p^k × probes per day` below
//! the allowed false alarms per day, so random loss almost never looks like an outage while a
//! clean link is declared down after a few probes. Time is a parameter (monotonic
//! nanoseconds).

use std::collections::VecDeque;
use std::time::Duration;

/// Liveness settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LivenessConfig {
    /// Interval between probes to this peer. Default 100 ms (10 Hz).
    pub probe_interval: Duration,
    /// Deadline = `deadline_factor × RTT p99 + deadline_margin`. Default 1.5.
    pub deadline_factor: f64,
    /// Default 5 ms.
    pub deadline_margin: Duration,
    /// Deadline before any RTT is known. Default 1 s.
    pub initial_deadline: Duration,
    /// Shortest miss run that declares a link down. Default 3.
    pub min_run: u32,
    /// Longest. Default 12.
    pub max_run: u32,
    /// Allowed false `LinkDown` per link per day under the measured random loss. Default 0.5.
    pub false_alarms_per_day: f64,
    /// Probes seen before the miss rate is trusted; until then the run is `max_run`. Default 50.
    pub warmup_probes: u32,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            probe_interval: Duration::from_millis(100),
            deadline_factor: 1.5,
            deadline_margin: Duration::from_millis(5),
            initial_deadline: Duration::from_secs(1),
            min_run: 3,
            max_run: 12,
            false_alarms_per_day: 0.5,
            warmup_probes: 50,
        }
    }
}

/// A change of the link's liveness: the topology's own event, so that what the prober sees is
/// exactly what the controller acts on.
pub use topology::Liveness as LivenessEvent;

const RTT_RING: usize = 256;

/// Probes behind [`Liveness::long_miss_rate`]: about three minutes at 10 Hz.
pub const LONG_MISS_PROBES: u32 = 2000;

/// Clean probes the long-run miss rate presumes before a link has any history: half a minute
/// at 10 Hz. A plain mean over the first few hundred probes jumps by a quarter point at each
/// random miss, and two of them would read as a lossy link.
pub const LONG_MISS_PRIOR: u32 = 300;

/// The liveness state of one peer.
#[derive(Debug, Clone)]
pub struct Liveness {
    cfg: LivenessConfig,
    /// Probes awaiting a reply or their deadline: (seq, sent ns, regular), in send order.
    pending: VecDeque<(u64, u64, bool)>,
    rtts_ns: VecDeque<u64>,
    p99_ns: Option<u64>,
    since_p99: usize,
    miss_rate: f64,
    /// The miss rate over about the last [`LONG_MISS_PROBES`] probes.
    long_miss_rate: f64,
    seen: u32,
    /// Regular probes behind `long_miss_rate`.
    seen_regular: u32,
    run: u32,
    /// Regular probes in the current run.
    run_regular: u32,
    /// When the first probe of the current run was sent (ns), and its sequence.
    run_sent: u64,
    run_seq: u64,
    /// A run was excused since the last reply (see [`Liveness::excuse_run`]).
    excused: bool,
    down: bool,
    misses: u64,
}

impl Liveness {
    /// A fresh state: up, nothing pending.
    pub fn new(cfg: LivenessConfig) -> Self {
        Liveness {
            cfg,
            pending: VecDeque::new(),
            rtts_ns: VecDeque::with_capacity(RTT_RING),
            p99_ns: None,
            since_p99: 0,
            miss_rate: 0.0,
            long_miss_rate: 0.0,
            seen: 0,
            seen_regular: 0,
            run: 0,
            run_regular: 0,
            run_sent: 0,
            run_seq: 0,
            excused: false,
            down: false,
            misses: 0,
        }
    }

    /// Whether the link is currently declared down.
    pub fn is_down(&self) -> bool {
        self.down
    }

    /// Probes that missed their deadline since this state was created.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// When the first probe of the current run of misses was sent (ns), while one runs.
    pub fn run_since(&self) -> Option<u64> {
        (self.run > 0).then_some(self.run_sent)
    }

    /// Takes back the `Down` the current run just declared, once between two replies: the
    /// caller found a cause other than the path (its own host stalled while the run's probes
    /// were in flight). The run's misses are forgotten (they count in no miss rate), and a
    /// new run must reach its length before the link is declared down; a second run before
    /// any reply declares it, excuse or none, so a dead link under a host that keeps
    /// stalling is still seen, one run later. Returns whether the run was excused.
    pub fn excuse_run(&mut self) -> bool {
        if !self.down || self.excused {
            return false;
        }
        self.down = false;
        self.excused = true;
        self.run = 0;
        self.run_regular = 0;
        true
    }

    /// Whether a run of misses is in progress on a link not yet declared down: the moment to
    /// ask again quickly, so an outage is confirmed (or ruled out) in tens of milliseconds.
    pub fn suspect(&self) -> bool {
        self.run > 0 && !self.down
    }

    /// The link's measured miss rate (about the last 200 probes).
    pub fn miss_rate(&self) -> f64 {
        self.miss_rate
    }

    /// The link's miss rate over about the last [`LONG_MISS_PROBES`] regular probes (before
    /// that many, a mean that presumes [`LONG_MISS_PRIOR`] clean ones): whether a link is lossy
    /// by nature, which one random miss does not change (it moves the 200-probe rate by half a
    /// percent, as much as the whole noise floor of a link losing 0.1% each way). Regular
    /// probes only: extra ones (bursts, asks again after a miss) are sent *because* of misses,
    /// and counting them would read a brown-out's first seconds, sampled five times over, as a
    /// lossy nature.
    pub fn long_miss_rate(&self) -> f64 {
        self.long_miss_rate
    }

    /// The current deadline after which a reply counts as missed.
    pub fn deadline(&self) -> Duration {
        match self.p99_ns {
            Some(p99) => {
                Duration::from_nanos((p99 as f64 * self.cfg.deadline_factor) as u64)
                    + self.cfg.deadline_margin
            }
            None => self.cfg.initial_deadline,
        }
    }

    /// The miss run that declares the link down, from the measured miss rate.
    pub fn run_length(&self) -> u32 {
        if self.seen < self.cfg.warmup_probes {
            return self.cfg.max_run;
        }
        let per_day = 86_400.0 / self.cfg.probe_interval.as_secs_f64();
        let p = self.miss_rate.clamp(1e-4, 0.9);
        let k = (per_day / self.cfg.false_alarms_per_day).ln() / (1.0 / p).ln();
        (k.ceil() as u32).clamp(self.cfg.min_run, self.cfg.max_run)
    }

    /// Records a probe sent at `now`; `regular` when it was sent on the probe timer, not
    /// because of a miss (see [`Liveness::long_miss_rate`]).
    pub fn on_send(&mut self, seq: u64, now: u64, regular: bool) {
        self.pending.push_back((seq, now, regular));
    }

    /// Records a reply to probe `seq` with round trip `rtt_ns`, received at `now`.
    pub fn on_reply(&mut self, seq: u64, rtt_ns: u64, now: u64) -> Option<LivenessEvent> {
        let _ = self.poll(now);
        if let Some(mut i) = self.pending.iter().position(|&(s, _, _)| s == seq) {
            if self.down {
                // The first reply after an outage: probes sent before this one were lost to
                // the outage, even those whose deadline has not passed yet. Counting them
                // later would start a new run, and when a reply ended it, make the outage
                // look like random loss and lengthen the run needed to see the next one.
                self.pending.drain(..i);
                i = 0;
            }
            // In time: every earlier pending probe is still within its deadline too.
            let regular = self.pending.remove(i).is_some_and(|(_, _, r)| r);
            // A run that ends in a reply before the link was declared down was random loss:
            // only now do its misses count towards the miss rate. A run that declared the link
            // down was an outage and never does, or every outage would lengthen the run needed
            // to see the next one.
            if !self.down {
                for k in 0..self.run {
                    self.observe(true, k < self.run_regular);
                }
            }
            self.observe(false, regular);
            self.run = 0;
            self.run_regular = 0;
        } else if self.run > 0 && seq >= self.run_seq {
            // A late answer to a probe of the current run: the peer answers, more slowly than
            // the deadline expected (a step up in round trip, an underlay reroute). Not an
            // outage, nor loss: the run ends uncounted, and the answer's round trip moves the
            // deadline. (In the lab a 60 ms step on a 75 ms link made a `Down` 0.3 s in and an
            // `Up` 17 ms later, and both directions' pairs went to a relay and back.)
            self.run = 0;
            self.run_regular = 0;
        }
        self.record_rtt(rtt_ns);
        self.excused = false;
        if self.down {
            self.down = false;
            self.run = 0;
            self.run_regular = 0;
            return Some(LivenessEvent::Up);
        }
        None
    }

    /// Counts probes whose deadline has passed at `now` as misses; returns `Down` when a run
    /// reaches its length.
    pub fn poll(&mut self, now: u64) -> Option<LivenessEvent> {
        let deadline = self.deadline().as_nanos() as u64;
        let mut event = None;
        while let Some(&(seq, sent, regular)) = self.pending.front() {
            if now.saturating_sub(sent) <= deadline {
                break;
            }
            self.pending.pop_front();
            if self.run == 0 {
                (self.run_sent, self.run_seq) = (sent, seq);
            }
            self.run += 1;
            self.run_regular += u32::from(regular);
            self.misses += 1;
            if !self.down && self.run >= self.run_length() && self.run_spans(sent) {
                self.down = true;
                event = Some(LivenessEvent::Down);
            }
        }
        event
    }

    /// Whether the current run, up to a missed probe sent at `sent`, spans a probe interval:
    /// asks sent again on a suspect link, ten a probe interval, make a run within tens of ms,
    /// which sees a blackhole in a quarter second where regular probes need three, but also
    /// made a `Down` before the late answer to the run's first ask arrived, when a step up in
    /// round trip had put it a few ms past the deadline (three asks missed within 20 ms). A
    /// run that spans an interval lets answers up to an interval late end it.
    fn run_spans(&self, sent: u64) -> bool {
        let interval = self.cfg.probe_interval.as_nanos() as u64;
        sent.saturating_sub(self.run_sent) >= interval
    }

    /// The time at which the oldest pending probe misses its deadline, if any is pending.
    pub fn next_deadline(&self) -> Option<u64> {
        let deadline = self.deadline().as_nanos() as u64;
        self.pending.front().map(|&(_, sent, _)| sent + deadline + 1)
    }

    /// A new connection: asks sent on the old one will never be answered, and their
    /// sequence numbers are used again. A link that was down stays down until an answer.
    pub fn new_connection(&mut self) {
        self.pending.clear();
    }

    /// The connection itself is gone: down at once.
    pub fn connection_lost(&mut self) -> Option<LivenessEvent> {
        self.pending.clear();
        if self.down {
            return None;
        }
        self.down = true;
        Some(LivenessEvent::Down)
    }

    /// Feeds one probe's fate into the miss rates: the short one (every probe) a plain mean
    /// over the first 200 probes, then a moving one over about the last 200; the long one
    /// (regular probes only) a mean with [`LONG_MISS_PRIOR`] clean probes presumed, then a
    /// moving one over about the last [`LONG_MISS_PROBES`].
    fn observe(&mut self, missed: bool, regular: bool) {
        self.seen = self.seen.saturating_add(1);
        let x = f64::from(u8::from(missed));
        self.miss_rate += (x - self.miss_rate) / f64::from(self.seen.min(200));
        if regular {
            self.seen_regular = self.seen_regular.saturating_add(1);
            let n = self
                .seen_regular
                .saturating_add(LONG_MISS_PRIOR)
                .min(LONG_MISS_PROBES);
            self.long_miss_rate += (x - self.long_miss_rate) / f64::from(n);
        }
    }

    fn record_rtt(&mut self, rtt_ns: u64) {
        if self.rtts_ns.len() == RTT_RING {
            self.rtts_ns.pop_front();
        }
        self.rtts_ns.push_back(rtt_ns);
        self.since_p99 += 1;
        if self.p99_ns.is_none() || self.since_p99 >= 16 {
            let mut v: Vec<u64> = self.rtts_ns.iter().copied().collect();
            v.sort_unstable();
            self.p99_ns = Some(v[(v.len() - 1) * 99 / 100]);
            self.since_p99 = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Drives a link at 10 Hz: `reply(i)` says whether probe `i` comes back, `rtt(i)` after how
    /// long. Returns (time, event) pairs.
    fn drive(
        probes: u64,
        reply: impl Fn(u64) -> bool,
        rtt: impl Fn(u64) -> u64,
    ) -> Vec<(u64, LivenessEvent)> {
        drive_every(100, probes, reply, rtt).1
    }

    /// [`drive`] with probes every `every_ms`; also returns the final state.
    fn drive_every(
        every_ms: u64,
        probes: u64,
        reply: impl Fn(u64) -> bool,
        rtt: impl Fn(u64) -> u64,
    ) -> (Liveness, Vec<(u64, LivenessEvent)>) {
        let mut l = Liveness::new(LivenessConfig::default());
        let mut events = Vec::new();
        let mut arrivals: Vec<(u64, u64, u64)> = Vec::new(); // (at, seq, rtt)
        // Step the clock in 1 ms ticks.
        let end = probes * every_ms * MS + 2_000 * MS;
        let mut t = 0;
        while t <= end {
            if t % (every_ms * MS) == 0 && t / (every_ms * MS) < probes {
                let i = t / (every_ms * MS);
                l.on_send(i, t, true);
                if reply(i) {
                    arrivals.push((t + rtt(i), i, rtt(i)));
                }
            }
            arrivals.sort_unstable();
            while arrivals.first().is_some_and(|a| a.0 <= t) {
                let (_, seq, r) = arrivals.remove(0);
                if let Some(e) = l.on_reply(seq, r, t) {
                    events.push((t, e));
                }
            }
            if let Some(e) = l.poll(t) {
                events.push((t, e));
            }
            t += MS;
        }
        (l, events)
    }

    #[test]
    fn a_blackhole_is_declared_within_half_a_second_and_healing_within_a_probe() {
        // 40 ms RTT, clean; blackhole from probe 600 (t = 60 s) to probe 650.
        let ev = drive(700, |i| !(600..650).contains(&i), |_| 40 * MS);
        assert_eq!(ev.len(), 2, "{ev:?}");
        let (down_at, e) = ev[0];
        assert_eq!(e, LivenessEvent::Down);
        let detect = down_at - 600 * 100 * MS;
        assert!(detect <= 500 * MS, "detected after {} ms", detect / MS);
        let (up_at, e) = ev[1];
        assert_eq!(e, LivenessEvent::Up);
        assert!(up_at - 650 * 100 * MS <= 100 * MS);
    }

    #[test]
    fn a_step_up_in_round_trip_is_no_outage() {
        // An underlay reroute: 75 ms, then more from the middle of the run on. The first asks
        // after the step miss the deadline the 75 ms made (about 118 ms), but each is answered
        // a little later, before a run of misses spans enough time for a `Down`: at 10 Hz,
        // and at an evidence burst's 100 asks a second.
        for (every_ms, after_ms) in [(100, 135), (10, 135), (10, 160), (10, 200)] {
            let probes = 600 * 100 / every_ms;
            let step = probes / 2;
            let rtt = |i| if i < step { 75 * MS } else { after_ms * MS };
            let (l, ev) = drive_every(every_ms, probes, |_| true, rtt);
            assert!(
                ev.is_empty(),
                "probes every {every_ms} ms, {after_ms} ms after: {ev:?}"
            );
            // The deadline follows the new round trip.
            assert!(
                l.deadline() > Duration::from_millis(after_ms),
                "{:?}",
                l.deadline()
            );
        }
        // Asked ten times as often, a blackhole is still declared within half a second.
        let (_, ev) = drive_every(10, 7_000, |i| !(6_000..6_500).contains(&i), |_| 75 * MS);
        assert_eq!(ev[0].1, LivenessEvent::Down, "{ev:?}");
        assert!(ev[0].0 - 6_000 * 10 * MS <= 500 * MS, "{ev:?}");
        // A blackhole is still a blackhole: no answer, late or not.
        let ev = drive(
            700,
            |i| !(600..650).contains(&i),
            |i| if i < 300 { 75 * MS } else { 135 * MS },
        );
        assert_eq!(
            ev.iter().filter(|e| e.1 == LivenessEvent::Down).count(),
            1,
            "{ev:?}"
        );
    }

    #[test]
    fn ten_minutes_of_five_percent_loss_each_way_never_looks_like_an_outage() {
        // Round trip loss 1 − 0.95² = 9.75%, RTT 40 ms with a few ms of noise; seeded.
        let coin = |i: u64, salt: u64| {
            let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64
        };
        let ev = drive(
            6_000,
            |i| coin(i, 1) >= 0.05 && coin(i, 2) >= 0.05,
            |i| 40 * MS + (coin(i, 3) * 4.0 * MS as f64) as u64,
        );
        assert!(ev.is_empty(), "false alarms: {ev:?}");
    }

    #[test]
    fn repeated_outages_do_not_slow_down_the_next_detection() {
        // Clean 40 ms link; a 1 s blackhole every 3 s, fifteen times.
        let dark = |i: u64| i >= 100 && (i - 100) % 30 < 10 && i < 100 + 15 * 30;
        let ev = drive(100 + 15 * 30 + 50, |i| !dark(i), |_| 40 * MS);
        let downs: Vec<u64> = ev
            .iter()
            .filter(|e| e.1 == LivenessEvent::Down)
            .map(|e| e.0)
            .collect();
        assert_eq!(downs.len(), 15, "{ev:?}");
        for (k, at) in downs.iter().enumerate() {
            let start = (100 + k as u64 * 30) * 100 * MS;
            assert!(
                at - start <= 500 * MS,
                "outage {k} seen after {} ms",
                (at - start) / MS
            );
        }
    }

    #[test]
    fn probes_lost_to_an_outage_are_not_counted_as_random_loss_after_it() {
        // 50 probes a second on a clean 40 ms link: at the heal several probes sent into the
        // blackhole are still pending. They belong to the outage, not to the link's loss.
        let dark = |i: u64| i >= 500 && (i - 500) % 150 < 40 && i < 500 + 10 * 150;
        let (l, ev) = drive_every(20, 500 + 10 * 150 + 100, |i| !dark(i), |_| 40 * MS);
        let downs = ev.iter().filter(|e| e.1 == LivenessEvent::Down).count();
        assert_eq!(downs, 10, "one Down per outage and no other: {ev:?}");
        assert!(l.miss_rate() < 1e-9, "outages counted as loss: {}", l.miss_rate());
        assert_eq!(l.run_length(), 3);
    }

    #[test]
    fn the_run_length_grows_with_the_measured_loss() {
        let mut l = Liveness::new(LivenessConfig::default());
        assert_eq!(l.run_length(), 12, "untrusted before warm-up");
        l.seen = 1000;
        l.miss_rate = 0.0;
        assert_eq!(l.run_length(), 3);
        l.miss_rate = 0.0975;
        assert_eq!(l.run_length(), 7);
        l.miss_rate = 0.3;
        assert_eq!(l.run_length(), 12);
    }

    #[test]
    fn an_excused_run_is_forgotten_once_between_replies() {
        let mut l = Liveness::new(LivenessConfig::default());
        // Warm: 300 answered probes at 10 Hz, 40 ms each.
        let mut t = 0;
        for i in 0..300 {
            l.on_send(i, t, true);
            assert_eq!(l.on_reply(i, 40 * MS, t + 40 * MS), None);
            t += 100 * MS;
        }
        let rate = l.miss_rate();
        // A dark link, asked every 50 ms: a run, then `Down`.
        let mut seq = 300;
        fn run_to_down(l: &mut Liveness, t: &mut u64, seq: &mut u64) -> u64 {
            let from = *t;
            loop {
                l.on_send(*seq, *t, false);
                *seq += 1;
                *t += 50 * MS;
                if l.poll(*t) == Some(LivenessEvent::Down) {
                    return *t - from;
                }
                assert!(*t - from < 10_000 * MS, "never down");
            }
        }
        let first = run_to_down(&mut l, &mut t, &mut seq);
        assert!(l.is_down() && l.run_since().is_some());
        assert!(l.excuse_run(), "the first run is excused");
        assert!(!l.is_down() && l.run_since().is_none());
        // The next run declares it again, and that one is not excused.
        let second = run_to_down(&mut l, &mut t, &mut seq);
        assert!(second <= first + 100 * MS, "{second} vs {first}");
        assert!(!l.excuse_run(), "two runs excused without a reply between");
        assert!(l.is_down());
        // A reply ends the outage, and the next run may be excused again; the excused
        // misses counted in no miss rate.
        l.on_send(seq, t, true);
        assert_eq!(l.on_reply(seq, 40 * MS, t + 40 * MS), Some(LivenessEvent::Up));
        seq += 1;
        t += 100 * MS;
        let _ = run_to_down(&mut l, &mut t, &mut seq);
        assert!(l.excuse_run());
        assert!(l.miss_rate() <= rate, "excused misses moved the miss rate");
    }
}
