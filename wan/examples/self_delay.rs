//! How much delay the emulator itself adds: packets go through a pipe with a fixed one-way
//! delay to a sink in the same process, and the sink subtracts the send instant and the
//! injected delay from the arrival instant. Prints p50, p99 and max of the excess at 1,000 and
//! 10,000 packets per second, twice: arrival as the kernel stamped it at the sink's socket
//! (what the emulator adds on the wire), and arrival as the sink's task read it (adding the
//! sink's own wake-up, which any receiver pays with or without an emulator).
//!
//! `cargo run --release -p axon-wan --example self_delay`

#![allow(clippy::unwrap_used)] // a measurement tool: a failed socket is a panic with its message

use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use wan::{Emulator, EmulatorConfig, LinkParams};

const DELAY: Duration = Duration::from_millis(5);
const RUN: Duration = Duration::from_secs(3);

/// Excess delay of each packet: (at the socket, as read by the task).
async fn measure(emu: &Emulator, rate: u32) -> (Vec<Duration>, Vec<Duration>) {
    let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    wan::stamp::enable(&sink).unwrap();
    let pipe = emu
        .pipe(
            sink.local_addr().unwrap(),
            LinkParams::delay(DELAY),
            LinkParams::default(),
        )
        .unwrap();
    let t0 = Instant::now();
    let recv = tokio::spawn(async move {
        let (mut wire, mut read) = (Vec::new(), Vec::new());
        let mut buf = [0u8; 64];
        while let Ok(Ok((n, _, at))) = tokio::time::timeout(
            Duration::from_millis(500),
            wan::stamp::recv_stamped(&sink, &mut buf),
        )
        .await
        {
            let now = t0.elapsed();
            if n == 8 {
                let sent = Duration::from_nanos(u64::from_be_bytes(buf[..8].try_into().unwrap()));
                wire.push((at - t0).saturating_sub(sent + DELAY));
                read.push(now.saturating_sub(sent + DELAY));
            }
        }
        (wire, read)
    });
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(pipe.front_addr()).await.unwrap();
    // Pace on a 1 ms tick (Tokio's resolution): each tick sends its share in a small burst.
    let per_tick = rate / 1000;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while t0.elapsed() < RUN {
        tick.tick().await;
        for _ in 0..per_tick {
            let stamp = t0.elapsed().as_nanos() as u64;
            client.send(&stamp.to_be_bytes()).await.unwrap();
        }
    }
    let (mut wire, mut read) = recv.await.unwrap();
    wire.sort();
    read.sort();
    drop(pipe);
    (wire, read)
}

fn pct(v: &[Duration], p: f64) -> f64 {
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // AXON_WAN_SPIN_US overrides the sender's spin window (0 = sleep only).
    let mut cfg = EmulatorConfig::default();
    if let Some(us) = std::env::var("AXON_WAN_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.spin = Duration::from_micros(us);
    }
    let emu = Emulator::new(cfg.clone()).unwrap();
    println!(
        "emulator self-delay (arrival − send − {} ms injected), {} s per rate, spin {} µs",
        DELAY.as_millis(),
        RUN.as_secs(),
        cfg.spin.as_micros()
    );
    println!(
        "{:>10} {:>10} {:>10} {:>10} {:>10} | {:>10} {:>10} {:>10}",
        "packets/s", "received", "p50 ms", "p99 ms", "max ms", "read p50", "read p99", "read max"
    );
    for rate in [1_000, 10_000] {
        let (w, r) = measure(&emu, rate).await;
        println!(
            "{rate:>10} {:>10} {:>10.3} {:>10.3} {:>10.3} | {:>10.3} {:>10.3} {:>10.3}",
            w.len(),
            pct(&w, 0.5),
            pct(&w, 0.99),
            pct(&w, 1.0),
            pct(&r, 0.5),
            pct(&r, 0.99),
            pct(&r, 1.0)
        );
    }
}
