//! Pipes: the emulated links. A pipe stands between a client and a server: the client sends to
//! the pipe's front address instead of the server's, the pipe forwards from its back socket to
//! the server, and the server's replies come back the same way — each direction shaped by its
//! own [`LinkParams`], changeable while traffic flows.

use std::net::{SocketAddr, UdpSocket as StdSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::error::WanError;
use crate::params::LinkParams;
use crate::scheduler::{DepartureOffsets, Job, Scheduler};
use crate::shaper::{DropReason, Fate, Shaper};
use crate::stamp;

/// Largest datagram a pipe carries (a UDP payload over IPv4).
const MAX_DATAGRAM: usize = 65_507;

/// Emulator-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatorConfig {
    /// How long before a packet's instant the sender stops sleeping and spins. Default 200 µs:
    /// enough to absorb the kernel's wake-up slack. Zero never spins: the sender learns how
    /// late it is woken and asks to be woken that much early, so packets leave on time at the
    /// median, a little more spread, at a fraction of the CPU (a spinning sender with tens of
    /// thousands of packets a second is never idle).
    pub spin: Duration,
    /// Seed of the first pipe's random generators; each pipe direction gets its own stream.
    /// Default 1.
    pub seed: u64,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            spin: Duration::from_micros(200),
            seed: 1,
        }
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirectionStats {
    /// Packets that entered.
    pub received: AtomicU64,
    /// UDP payload bytes that entered (add 28 per packet for IPv4 + UDP headers).
    pub received_bytes: AtomicU64,
    /// Packets sent on.
    pub sent: Arc<AtomicU64>,
    /// Dropped by random or burst loss.
    pub lost: AtomicU64,
    /// Dropped by a blackhole.
    pub blackholed: AtomicU64,
    /// Dropped by a full rate-limiter queue.
    pub queue_dropped: AtomicU64,
    /// Packets from an address that is not this pipe's peer, ignored.
    pub foreign: AtomicU64,
}

impl DirectionStats {
    fn count(&self, reason: DropReason) {
        match reason {
            DropReason::Loss => &self.lost,
            DropReason::Blackhole => &self.blackholed,
            DropReason::Queue => &self.queue_dropped,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

struct Direction {
    shaper: Mutex<Shaper>,
    stats: DirectionStats,
}

/// Which way through a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Client to server.
    Forward,
    /// Server to client.
    Backward,
}

/// The emulator: owns the precise sender thread shared by every pipe.
pub struct Emulator {
    cfg: EmulatorConfig,
    scheduler: Arc<Scheduler>,
    pipes: AtomicU64,
}

impl Emulator {
    /// Starts the sender thread.
    pub fn new(cfg: EmulatorConfig) -> Result<Self, WanError> {
        Ok(Emulator {
            scheduler: Arc::new(Scheduler::start(cfg.spin)?),
            cfg,
            pipes: AtomicU64::new(0),
        })
    }

    /// When every packet the pipes sent on so far left against its instant (the emulated
    /// delay's due time): late wake-ups of the sender, or a host too busy to run it, add
    /// their offset to the delay every measurement through the pipes sees.
    pub fn departures(&self) -> DepartureOffsets {
        self.scheduler.departures()
    }

    /// Opens a pipe to `server` on a new loopback port. Must be called inside a Tokio runtime,
    /// which runs the pipe's two receive tasks.
    pub fn pipe(
        &self,
        server: SocketAddr,
        forward: LinkParams,
        backward: LinkParams,
    ) -> Result<Pipe, WanError> {
        forward.validate()?;
        backward.validate()?;
        let local = if server.is_ipv6() {
            "[::1]:0"
        } else {
            "127.0.0.1:0"
        };
        let open = || -> Result<(Arc<StdSocket>, UdpSocket), WanError> {
            let s = StdSocket::bind(local)?;
            s.set_nonblocking(true)?;
            let recv = UdpSocket::from_std(s.try_clone()?)?;
            // Packets are timed from their arrival in the kernel, not from the task's wake-up.
            stamp::enable(&recv)?;
            Ok((Arc::new(s), recv))
        };
        let (front_send, front_recv) = open()?;
        let (back_send, back_recv) = open()?;
        let front_addr = front_send.local_addr()?;
        let id = self.pipes.fetch_add(1, Ordering::Relaxed);
        let seed = |way: u64| {
            self.cfg
                .seed
                .wrapping_add(id.wrapping_mul(2).wrapping_add(way).wrapping_mul(0x9E37_79B9))
        };
        let dir = |p: LinkParams, way| {
            Arc::new(Direction {
                shaper: Mutex::new(Shaper::new(p, seed(way))),
                stats: DirectionStats::default(),
            })
        };
        let (fwd, bwd) = (dir(forward, 0), dir(backward, 1));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));

        let forward_task = tokio::spawn(relay(
            front_recv,
            fwd.clone(),
            self.scheduler.clone(),
            back_send.clone(),
            Peer::Learn(client.clone(), server),
        ));
        let backward_task = tokio::spawn(relay(
            back_recv,
            bwd.clone(),
            self.scheduler.clone(),
            front_send,
            Peer::Reply(client, server),
        ));
        Ok(Pipe {
            front_addr,
            back_addr: back_send.local_addr()?,
            fwd,
            bwd,
            tasks: [forward_task, backward_task],
        })
    }
}

/// Where a receive task sends what it gets.
enum Peer {
    /// Front side: remember the client, send to the server.
    Learn(Arc<Mutex<Option<SocketAddr>>>, SocketAddr),
    /// Back side: accept only the server, send to the last client.
    Reply(Arc<Mutex<Option<SocketAddr>>>, SocketAddr),
}

async fn relay(
    socket: UdpSocket,
    dir: Arc<Direction>,
    scheduler: Arc<Scheduler>,
    out: Arc<StdSocket>,
    peer: Peer,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((len, from, now)) = stamp::recv_stamped(&socket, &mut buf).await else {
            // ICMP errors from a closed peer surface here on Linux; keep serving, but let
            // other tasks run should errors repeat.
            tokio::task::yield_now().await;
            continue;
        };
        let dest = match &peer {
            Peer::Learn(client, server) => {
                *client.lock().unwrap_or_else(|e| e.into_inner()) = Some(from);
                *server
            }
            Peer::Reply(client, server) => {
                let last = *client.lock().unwrap_or_else(|e| e.into_inner());
                match last {
                    Some(c) if from == *server => c,
                    _ => {
                        dir.stats.foreign.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
        };
        dir.stats.received.fetch_add(1, Ordering::Relaxed);
        dir.stats.received_bytes.fetch_add(len as u64, Ordering::Relaxed);
        let fate = dir
            .shaper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(len, now);
        match fate {
            Fate::Drop(reason) => dir.stats.count(reason),
            Fate::Deliver(at) => {
                let job = Job {
                    at,
                    seq: 0,
                    data: buf[..len].to_vec(),
                    socket: out.clone(),
                    dest,
                    sent: dir.stats.sent.clone(),
                };
                if !scheduler.push(job) {
                    return;
                }
            }
        }
    }
}

/// One emulated link between a client and a server. Dropping it closes it.
pub struct Pipe {
    front_addr: SocketAddr,
    back_addr: SocketAddr,
    fwd: Arc<Direction>,
    bwd: Arc<Direction>,
    tasks: [JoinHandle<()>; 2],
}

impl Pipe {
    /// Where the client sends instead of the server.
    pub fn front_addr(&self) -> SocketAddr {
        self.front_addr
    }

    /// The address the server sees packets come from.
    pub fn back_addr(&self) -> SocketAddr {
        self.back_addr
    }

    fn dir(&self, way: Way) -> &Direction {
        match way {
            Way::Forward => &self.fwd,
            Way::Backward => &self.bwd,
        }
    }

    /// Changes one direction's parameters while traffic flows.
    pub fn set(&self, way: Way, params: LinkParams) -> Result<(), WanError> {
        params.validate()?;
        self.dir(way)
            .shaper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set(params);
        Ok(())
    }

    /// One direction's parameters.
    pub fn params(&self, way: Way) -> LinkParams {
        self.dir(way)
            .shaper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .params()
            .clone()
    }

    /// One direction's counters.
    pub fn stats(&self, way: Way) -> &DirectionStats {
        &self.dir(way).stats
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A handy default for tests: a symmetric pipe whose one-way delay is half `rtt`.
pub fn symmetric(rtt: Duration) -> (LinkParams, LinkParams) {
    (LinkParams::delay(rtt / 2), LinkParams::delay(rtt / 2))
}
