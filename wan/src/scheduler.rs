//! The sender: one thread that sends every packet at its instant, to a fraction of a
//! millisecond.
//!
//! Tokio's timers tick in milliseconds, too coarse for a 5 ms link. The sender keeps the
//! packets in a heap ordered by instant, sleeps on a condition variable until shortly before
//! the next one is due (the kernel may wake it tens of microseconds late), then spins for the
//! last stretch (`spin`). Receivers push packets from any thread.
//!
//! With `spin` zero the sender never spins: it learns how late the kernel wakes it (the
//! median, [`Lead`]) and asks to be woken that much early, and sends every packet due within
//! that lead. Packets then leave on time at the median, spread by the wake-ups' variation,
//! and the thread sleeps between them: at tens of thousands of packets a second a spinning
//! sender is never idle, and takes a whole core from what it emulates the network for.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One packet waiting for its instant.
pub(crate) struct Job {
    pub at: Instant,
    pub seq: u64,
    pub data: Vec<u8>,
    pub socket: Arc<UdpSocket>,
    pub dest: SocketAddr,
    pub sent: Arc<AtomicU64>,
}

impl PartialEq for Job {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Job {}

impl PartialOrd for Job {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Job {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and the earliest packet must come out first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Shared {
    heap: Mutex<BinaryHeap<Job>>,
    wake: Condvar,
    stop: AtomicBool,
    seq: AtomicU64,
    departures: Mutex<Departures>,
}

/// When the sender's packets left against their instants: how far the emulated delays ran
/// over (a late wake-up, a stalled or overloaded host) or under (the learnt lead), for a run's
/// report to tell the host's share of a measured round trip's error from the prober's.
#[derive(Debug, Clone)]
pub(crate) struct Departures {
    /// Microseconds after its instant each packet left, plus [`Departures::EARLY`].
    offsets: Histogram<u64>,
}

/// A summary of [`Departures`]: packets sent and how late they left, in milliseconds (negative
/// when early).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DepartureOffsets {
    /// Packets sent on by the sender.
    pub packets: u64,
    /// The median offset, ms.
    pub p50_ms: f64,
    /// The 99th percentile, ms.
    pub p99_ms: f64,
    /// The largest, ms.
    pub max_ms: f64,
}

impl Departures {
    /// Shift that keeps an early departure (at most [`Lead::MAX`]) a positive count, µs.
    const EARLY: u64 = 1_000;
    /// Offsets beyond this are recorded as this, µs (a minute: a host frozen for longer is
    /// not emulating a network).
    const MAX: u64 = 60_000_000;

    pub(crate) fn new() -> Self {
        Departures {
            offsets: Histogram::new_with_bounds(1, Self::MAX + Self::EARLY, 2)
                .expect("static histogram bounds are valid"),
        }
    }

    /// A packet due at `due` left at `sent`.
    pub(crate) fn record(&mut self, due: Instant, sent: Instant) {
        let us = if sent >= due {
            Self::EARLY.saturating_add(sent.duration_since(due).as_micros().min(u128::from(Self::MAX)) as u64)
        } else {
            Self::EARLY
                .saturating_sub(due.duration_since(sent).as_micros().min(u128::from(Self::EARLY)) as u64)
        };
        self.offsets.saturating_record(us.max(1));
    }

    pub(crate) fn summary(&self) -> DepartureOffsets {
        let ms = |us: u64| (us as f64 - Self::EARLY as f64) / 1_000.0;
        if self.offsets.is_empty() {
            return DepartureOffsets::default();
        }
        DepartureOffsets {
            packets: self.offsets.len(),
            p50_ms: ms(self.offsets.value_at_quantile(0.5)),
            p99_ms: ms(self.offsets.value_at_quantile(0.99)),
            max_ms: ms(self.offsets.max()),
        }
    }
}

/// Owns the sender thread; stops and joins it when dropped.
pub(crate) struct Scheduler {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Scheduler {
    pub(crate) fn start(spin: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            heap: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            departures: Mutex::new(Departures::new()),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("wan-sender".into())
            .spawn(move || run(&s, spin))?;
        Ok(Scheduler {
            shared,
            thread: Some(thread),
        })
    }

    /// When the packets sent so far left against their instants.
    pub(crate) fn departures(&self) -> DepartureOffsets {
        self.shared
            .departures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .summary()
    }

    /// Queues a packet; returns false once the scheduler has stopped.
    pub(crate) fn push(&self, mut job: Job) -> bool {
        if self.shared.stop.load(AtomicOrdering::Relaxed) {
            return false;
        }
        job.seq = self.shared.seq.fetch_add(1, AtomicOrdering::Relaxed);
        let mut heap = self.shared.heap.lock().unwrap_or_else(|e| e.into_inner());
        let earliest = heap.peek().is_none_or(|j| job.at < j.at);
        heap.push(job);
        drop(heap);
        if earliest {
            self.shared.wake.notify_one();
        }
        true
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.stop.store(true, AtomicOrdering::Relaxed);
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            // The sender never panics on its own; a join error would only repeat a panic.
            let _ = t.join();
        }
    }
}

/// The sender's estimate of how late the kernel wakes it: a median, stepped one microsecond
/// toward each observation, so that a stall (milliseconds) moves it by no more than a wake-up
/// on time does. Capped at 500 µs: however the host behaves, no packet leaves more than that
/// ahead of its instant (nor before it arrived: it is queued on arrival).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Lead(Duration);

impl Lead {
    const STEP: Duration = Duration::from_micros(1);
    const MAX: Duration = Duration::from_micros(500);

    /// How early to ask to be woken.
    pub(crate) fn get(self) -> Duration {
        self.0
    }

    /// One wake-up, `late` after the instant asked for.
    pub(crate) fn observe(&mut self, late: Duration) {
        if late > self.0 {
            self.0 = (self.0 + Self::STEP).min(Self::MAX);
        } else if late < self.0 {
            self.0 = self.0.saturating_sub(Self::STEP);
        }
    }
}

fn run(shared: &Shared, spin: Duration) {
    let learn = spin.is_zero();
    let mut lead = Lead::default();
    let mut heap = shared.heap.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if shared.stop.load(AtomicOrdering::Relaxed) {
            return;
        }
        let Some(next) = heap.peek().map(|j| j.at) else {
            heap = shared.wake.wait(heap).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        let now = Instant::now();
        // Due, or due sooner than the kernel would wake us for it.
        if next <= now + lead.get() {
            let job = heap.pop().expect("peeked just now");
            drop(heap);
            // Loopback sends do not block; a full buffer is a drop, as on a real link.
            if job.socket.send_to(&job.data, job.dest).is_ok() {
                job.sent.fetch_add(1, AtomicOrdering::Relaxed);
                let sent = Instant::now();
                shared
                    .departures
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(job.at, sent);
            }
            heap = shared.heap.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        let wait = next - now;
        if wait > spin + lead.get() {
            let wake_at = next - spin - lead.get();
            heap = shared
                .wake
                .wait_timeout(heap, wake_at - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            let woke = Instant::now();
            // A wake-up before the instant asked for was a new packet's notice, not the timer.
            if learn && woke >= wake_at {
                lead.observe(woke - wake_at);
            }
        } else {
            // The last stretch: release the lock (receivers keep pushing) and spin.
            drop(heap);
            while Instant::now() < next {
                std::hint::spin_loop();
            }
            heap = shared.heap.lock().unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails if early departures are lost or counted late, or the quantiles drift from the
    /// offsets recorded.
    #[test]
    fn departures_keep_early_and_late_offsets_apart() {
        let mut d = Departures::new();
        assert_eq!(d.summary(), DepartureOffsets::default());
        let due = Instant::now() + Duration::from_millis(10);
        // 60 packets 200 µs early, 39 at 3 ms late, one 2 s late.
        for _ in 0..60 {
            d.record(due, due - Duration::from_micros(200));
        }
        for _ in 0..39 {
            d.record(due, due + Duration::from_millis(3));
        }
        d.record(due, due + Duration::from_secs(2));
        let s = d.summary();
        assert_eq!(s.packets, 100);
        assert!((s.p50_ms + 0.2).abs() < 0.01, "p50 {}", s.p50_ms);
        assert!((s.p99_ms - 3.0).abs() < 0.05, "p99 {}", s.p99_ms);
        assert!((s.max_ms - 2000.0).abs() < 20.0, "max {}", s.max_ms);
    }

    /// Fails if the lead follows the mean (pulled up by stalls) or does not settle.
    #[test]
    fn the_lead_settles_on_the_median_wake_up_and_shrugs_off_stalls() {
        let mut lead = Lead::default();
        // Wake-ups 30–70 µs late, one in ten a 5 ms stall: median about 54 µs, mean over 500.
        let mut x: u64 = 7;
        for _ in 0..5_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let r = (x >> 33) % 100;
            let late = if r < 10 { 5_000 } else { 30 + (r - 10) * 40 / 90 };
            lead.observe(Duration::from_micros(late));
        }
        let us = lead.get().as_micros();
        assert!((45..=65).contains(&us), "lead {us} µs");
        // Wake-ups on time bring it back down; it never goes past the cap.
        for _ in 0..1_000 {
            lead.observe(Duration::ZERO);
        }
        assert_eq!(lead.get(), Duration::ZERO);
        for _ in 0..10_000 {
            lead.observe(Duration::from_secs(1));
        }
        assert_eq!(lead.get(), Lead::MAX);
    }
}
