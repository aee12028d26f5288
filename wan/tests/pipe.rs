//! Real UDP through real pipes on loopback: delay, per-direction loss, blackholes that heal,
//! foreign senders. Timing assertions are generous (a busy 2-core machine); the precise figures
//! come from `examples/self_delay.rs`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use wan::{Emulator, EmulatorConfig, LinkParams, Pipe, Way};

/// An echo server on loopback; returns its address.
async fn echo_server() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// Sends `count` numbered packets through the pipe, `gap` apart, and collects replies until
/// none has come for `quiet`. Returns (index, round trip) per reply.
async fn probe(pipe: &Pipe, count: u32, gap: Duration, quiet: Duration) -> Vec<(u32, Duration)> {
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(pipe.front_addr()).await.unwrap();
    let t0 = Instant::now();
    let mut sent_at = Vec::with_capacity(count as usize);
    let mut replies = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0..count {
        sent_at.push(t0.elapsed());
        client.send(&i.to_be_bytes()).await.unwrap();
        // Drain whatever has arrived meanwhile, without waiting.
        while let Ok(n) = client.try_recv(&mut buf) {
            if n == 4 {
                let k = u32::from_be_bytes(buf[..4].try_into().unwrap());
                replies.push((k, t0.elapsed() - sent_at[k as usize]));
            }
        }
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    while let Ok(Ok(n)) = tokio::time::timeout(quiet, client.recv(&mut buf)).await {
        if n == 4 {
            let k = u32::from_be_bytes(buf[..4].try_into().unwrap());
            replies.push((k, t0.elapsed() - sent_at[k as usize]));
        }
    }
    replies
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_delay_shows_in_the_round_trip() {
    let emu = Emulator::new(EmulatorConfig::default()).unwrap();
    let server = echo_server().await;
    let d = Duration::from_millis(20);
    let pipe = emu
        .pipe(server, LinkParams::delay(d), LinkParams::delay(d))
        .unwrap();
    let replies = probe(&pipe, 100, Duration::from_millis(2), Duration::from_millis(500)).await;
    assert_eq!(replies.len(), 100);
    let rtts: Vec<Duration> = replies.iter().map(|r| r.1).collect();
    let p50 = percentile(rtts.clone(), 0.5);
    assert!(p50 >= 2 * d, "a packet came back early: p50 {p50:?}");
    // Generous: a busy host (a virtual machine whose hypervisor takes a share of its CPU)
    // wakes the sender late; the emulator's precision is measured by the `self_delay`
    // example, not here. A delay applied twice, or not at all, still fails.
    assert!(
        p50 < 2 * d + Duration::from_millis(10),
        "p50 {p50:?} for an injected 40 ms"
    );
    // No packet skips the delay either way. (The slowest is not bounded here: one stall of
    // the test's own threads on a busy host is enough to make it late.)
    let fastest = percentile(rtts, 0.0);
    assert!(fastest >= 2 * d, "a packet came back in {fastest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loss_applies_to_its_own_direction_only() {
    let emu = Emulator::new(EmulatorConfig::default()).unwrap();
    let server = echo_server().await;
    let pipe = emu
        .pipe(
            server,
            LinkParams {
                loss: 0.2,
                ..Default::default()
            },
            LinkParams::default(),
        )
        .unwrap();
    let n = 2000;
    let replies = probe(&pipe, n, Duration::from_micros(200), Duration::from_millis(300)).await;
    let ratio = replies.len() as f64 / f64::from(n);
    // 80% delivered: σ ≈ 0.9%; allow 5σ.
    assert!((ratio - 0.8).abs() < 0.045, "delivered {ratio}");
    let (f, b) = (pipe.stats(Way::Forward), pipe.stats(Way::Backward));
    assert_eq!(f.received.load(Ordering::Relaxed), u64::from(n));
    // Each probe is a 4-byte payload.
    assert_eq!(f.received_bytes.load(Ordering::Relaxed), 4 * u64::from(n));
    assert_eq!(
        f.lost.load(Ordering::Relaxed) + f.sent.load(Ordering::Relaxed),
        u64::from(n)
    );
    assert_eq!(b.lost.load(Ordering::Relaxed), 0);
    assert_eq!(b.sent.load(Ordering::Relaxed), replies.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_drops_everything_and_heals_while_running() {
    let emu = Emulator::new(EmulatorConfig::default()).unwrap();
    let server = echo_server().await;
    let pipe = emu
        .pipe(server, LinkParams::default(), LinkParams::default())
        .unwrap();
    assert_eq!(
        probe(&pipe, 5, Duration::ZERO, Duration::from_millis(300))
            .await
            .len(),
        5
    );
    pipe.set(
        Way::Backward,
        LinkParams {
            blackhole: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        probe(&pipe, 50, Duration::ZERO, Duration::from_millis(300))
            .await
            .is_empty()
    );
    assert_eq!(pipe.stats(Way::Backward).blackholed.load(Ordering::Relaxed), 50);
    pipe.set(Way::Backward, LinkParams::default()).unwrap();
    assert_eq!(
        probe(&pipe, 5, Duration::ZERO, Duration::from_millis(300))
            .await
            .len(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_senders_on_the_back_side_are_ignored_and_counted() {
    let emu = Emulator::new(EmulatorConfig::default()).unwrap();
    let server = echo_server().await;
    let pipe = emu
        .pipe(server, LinkParams::default(), LinkParams::default())
        .unwrap();
    probe(&pipe, 1, Duration::ZERO, Duration::from_millis(200)).await;
    let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    stranger.send_to(b"hello", pipe.back_addr()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while pipe.stats(Way::Backward).foreign.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the foreign datagram was never seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(pipe.stats(Way::Backward).sent.load(Ordering::Relaxed), 1);
}

#[test]
fn invalid_parameters_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let emu = Emulator::new(EmulatorConfig::default()).unwrap();
        let server = echo_server().await;
        let bad = LinkParams {
            loss: 1.5,
            ..Default::default()
        };
        assert!(emu.pipe(server, bad.clone(), LinkParams::default()).is_err());
        let pipe = emu
            .pipe(server, LinkParams::default(), LinkParams::default())
            .unwrap();
        assert!(pipe.set(Way::Forward, bad).is_err());
        assert!(
            pipe.set(
                Way::Forward,
                LinkParams {
                    rate_bps: Some(0),
                    ..Default::default()
                }
            )
            .is_err()
        );
        assert_eq!(pipe.params(Way::Forward), LinkParams::default());
    });
}
