//! The sender: one thread that sends every packet at its instant, to a fraction of a
//! millisecond.
//!
//! Tokio's timers tick in milliseconds, too coarse for a 5 ms link. The sender keeps the
//! packets in a heap ordered by instant, sleeps on a condition variable until shortly before
//! the next one is due (the kernel may wake it tens of microseconds late), then spins for the
//! last stretch (`spin`). Receivers push packets from any thread.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

fn run(shared: &Shared, spin: Duration) {
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
        if next <= now {
            let job = heap.pop().expect("peeked just now");
            drop(heap);
            // Loopback sends do not block; a full buffer is a drop, as on a real link.
            if job.socket.send_to(&job.data, job.dest).is_ok() {
                job.sent.fetch_add(1, AtomicOrdering::Relaxed);
            }
            heap = shared.heap.lock().unwrap_or_else(|e| e.into_inner());
            continue;
        }
        let wait = next - now;
        if wait > spin {
            heap = shared
                .wake
                .wait_timeout(heap, wait - spin)
                .unwrap_or_else(|e| e.into_inner())
                .0;
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
