//! The prober's figures, measured on this machine through the userspace WAN emulator:
//! RTT error against injected delays, blackhole detection, the false-alarm rate, loss
//! estimates against injected loss, bytes on the wire per probed pair, and the CPU of a real `axon-prober` process probing 50 peers at 10 Hz.
//!
//! `cargo build --release -p axon-prober --bins --examples && target/release/examples/probe_bench`
//! Environment: `AXON_BENCH_RTT_SECS` (default 30), `AXON_BENCH_LOSS_SECS` (default 30),
//! `AXON_BENCH_CPU_SECS` (default 30), `AXON_BENCH_TRIALS` (blackhole trials, default 15),
//! `AXON_BENCH_BURST_EXTRA` (evidence-burst probes per interval, default the prober's).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prober::tls::{generate_mesh, mesh_files};
use prober::{Output, PeerConfig, ProberConfig, wilson};
use tokio::sync::broadcast;
use wan::{Emulator, EmulatorConfig, LinkParams, Way};

/// The measuring site (a realistic id; it sorts before the peers', so it dials).
const ME: &str = "aws-use1";

fn secs(var: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

fn config(dir: &std::path::Path, site: &str, peers: Vec<(String, SocketAddr)>) -> ProberConfig {
    ProberConfig {
        site: site.into(),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        metrics_listen: None,
        tls: mesh_files(dir, site),
        peers: peers
            .into_iter()
            .map(|(site, addr)| PeerConfig { site, addr })
            .collect(),
        burst: prober::config::BurstSettings {
            extra: std::env::var("AXON_BENCH_BURST_EXTRA")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(prober::config::BurstSettings::default().extra),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Collects windows for `run` after skipping the first two connected windows of each peer.
async fn windows(
    rx: &mut broadcast::Receiver<Output>,
    run: Duration,
) -> HashMap<String, Vec<prober::PeerWindow>> {
    let mut out: HashMap<String, Vec<prober::PeerWindow>> = HashMap::new();
    let mut skipped: HashMap<String, u32> = HashMap::new();
    let end = Instant::now() + run;
    while let Ok(Ok(o)) = tokio::time::timeout(end.saturating_duration_since(Instant::now()), rx.recv()).await
    {
        if let Output::Window(w) = o {
            let s = skipped.entry(w.peer.to_string()).or_default();
            if !w.connected || *s < 2 {
                *s += u32::from(w.connected);
                continue;
            }
            out.entry(w.peer.to_string()).or_default().push(w);
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let dir = tempfile::tempdir()?;
    let peers: Vec<String> = (0..50).map(|i| format!("p{i:02}")).collect();
    let mut sites: Vec<&str> = vec![ME, "r5", "r40", "r150", "l1", "l5", "l20", "c"];
    sites.extend(peers.iter().map(String::as_str));
    generate_mesh(dir.path(), &sites)?;
    let emu = Emulator::new(EmulatorConfig::default())?;

    // 1. RTT error, and bytes on the wire on each pair, both sites measuring each other (the
    // peers list ME at its own address; ME's id sorts first, so ME dials, through the pipes).
    let rtts = [("r5", 5u64), ("r40", 40), ("r150", 150)];
    let me_addr = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let mut reflectors = Vec::new();
    let mut pipes = Vec::new();
    for (site, ms) in rtts {
        let r = prober::start(config(dir.path(), site, vec![(ME.into(), me_addr)])).await?;
        let (f, b) = wan::symmetric(Duration::from_millis(ms));
        pipes.push(emu.pipe(r.local_addr, f, b)?);
        reflectors.push(r);
    }
    let peers_cfg = rtts
        .iter()
        .zip(&pipes)
        .map(|((s, _), p)| ((*s).to_string(), p.front_addr()))
        .collect();
    let mut cfg = config(dir.path(), ME, peers_cfg);
    cfg.window_ms = 5_000;
    cfg.listen = me_addr;
    let a = prober::start(cfg).await?;
    let mut rx = a.subscribe();
    let run = secs("AXON_BENCH_RTT_SECS", 30);
    eprintln!("measuring RTT for {run:?} …");
    // Bytes: count from after the warm-up to the end of the run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bytes0: Vec<Vec<(u64, u64)>> = pipes
        .iter()
        .map(|pipe| {
            [Way::Forward, Way::Backward]
                .iter()
                .map(|w| {
                    let s = pipe.stats(*w);
                    (
                        s.received_bytes.load(Ordering::Relaxed),
                        s.received.load(Ordering::Relaxed),
                    )
                })
                .collect()
        })
        .collect();
    let t_bytes = Instant::now();
    let got = windows(&mut rx, run).await;
    let elapsed = t_bytes.elapsed().as_secs_f64();
    // Per direction: bits per second on the wire (UDP payload plus 28 bytes of IPv4 and UDP
    // headers), packets per second, and the mean packet size on the wire.
    let wire: Vec<Vec<(f64, f64, f64)>> = pipes
        .iter()
        .zip(&bytes0)
        .map(|(pipe, before)| {
            [Way::Forward, Way::Backward]
                .iter()
                .zip(before)
                .map(|(w, (b0, p0))| {
                    let s = pipe.stats(*w);
                    let b = s.received_bytes.load(Ordering::Relaxed) - b0;
                    let p = s.received.load(Ordering::Relaxed) - p0;
                    let on_wire = (b + 28 * p) as f64;
                    (
                        on_wire * 8.0 / elapsed,
                        p as f64 / elapsed,
                        on_wire / p.max(1) as f64,
                    )
                })
                .collect()
        })
        .collect();
    println!("\n## RTT error (measured − injected), {run:?} at 10 Hz, 5 s windows");
    println!(
        "| injected RTT | windows | p50 error (median over windows) | p99 error (median over windows) |"
    );
    println!("|---|---|---|---|");
    for (site, ms) in rtts {
        let ws = got.get(site).cloned().unwrap_or_default();
        let e50 = median(ws.iter().map(|w| w.report.rtt_ms[1] - ms as f64).collect());
        let e99 = median(ws.iter().map(|w| w.report.rtt_ms[3] - ms as f64).collect());
        println!("| {ms} ms | {} | {e50:+.3} ms | {e99:+.3} ms |", ws.len());
    }
    println!("\n## Bytes on the wire per pair, both sites measuring at 10 Hz (IPv4 + UDP + QUIC)");
    println!("| RTT | {ME} → peer (datagrams, ACKs) | peer → {ME} (datagrams, ACKs) |");
    println!("|---|---|---|");
    for ((_, ms), w) in rtts.iter().zip(&wire) {
        let cell = |(bps, pps, size): (f64, f64, f64)| {
            format!("{:.2} kbit/s ({pps:.1} packets/s, {size:.0} B each)", bps / 1e3)
        };
        println!("| {ms} ms | {} | {} |", cell(w[0]), cell(w[1]));
    }
    a.shutdown().await;
    for r in reflectors {
        r.shutdown().await;
    }
    drop(pipes);

    // 1b. Blackhole detection: trials on a 40 ms link at 10 Hz.
    let r = prober::start(config(dir.path(), "r40", vec![])).await?;
    let (f, b) = wan::symmetric(Duration::from_millis(40));
    let pipe = emu.pipe(r.local_addr, f.clone(), b)?;
    let a = prober::start(config(dir.path(), ME, vec![("r40".into(), pipe.front_addr())])).await?;
    let mut rx = a.subscribe();
    tokio::time::sleep(Duration::from_secs(8)).await; // past liveness's warm-up
    let trials = std::env::var("AXON_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15u64);
    eprintln!("blackhole trials: {trials} …");
    let mut detect = Vec::new();
    for i in 0..trials {
        // A random offset against the probe phase.
        tokio::time::sleep(Duration::from_millis(1_500 + (i * 37) % 100)).await;
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        pipe.set(
            Way::Forward,
            LinkParams {
                blackhole: true,
                ..f.clone()
            },
        )?;
        let down = wait_event(&mut rx, prober::LivenessEvent::Down, Duration::from_secs(5)).await;
        let took = t0.elapsed();
        pipe.set(Way::Forward, f.clone())?;
        if down {
            detect.push(took.as_secs_f64() * 1e3);
        }
        wait_event(&mut rx, prober::LivenessEvent::Up, Duration::from_secs(10)).await;
    }
    let n = detect.len();
    let mut sorted = detect.clone();
    sorted.sort_by(f64::total_cmp);
    println!("\n## Blackhole → LinkDown, 40 ms RTT at 10 Hz, {trials} trials");
    println!("| detected | median | min | max |");
    println!("|---|---|---|---|");
    println!(
        "| {n}/{trials} | {:.0} ms | {:.0} ms | {:.0} ms |",
        median(detect),
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN)
    );
    a.shutdown().await;
    r.shutdown().await;
    drop(pipe);

    // 1c. False LinkDown under 5% random loss each way: the liveness logic over simulated
    // link-days (the same code the daemon runs, with time as a parameter).
    let days = 10u64;
    let (false_downs, probes) = simulate_false_downs(days);
    println!("\n## False LinkDown at 5% random loss each way (9.75% round trip), 40 ± 2 ms RTT, 10 Hz");
    println!("| simulated | probes | false LinkDown | per link-day |");
    println!("|---|---|---|---|");
    println!(
        "| {days} link-days | {probes} | {false_downs} | {:.2} |",
        false_downs as f64 / days as f64
    );

    // 2. Loss estimates: loss injected on the forward way only, so the round-trip truth is it.
    let losses = [("l1", 0.01), ("l5", 0.05), ("l20", 0.20)];
    let mut reflectors = Vec::new();
    let mut pipes = Vec::new();
    for (site, p) in losses {
        let r = prober::start(config(dir.path(), site, vec![])).await?;
        let f = LinkParams {
            delay: Duration::from_millis(10),
            loss: p,
            ..Default::default()
        };
        pipes.push(emu.pipe(r.local_addr, f, LinkParams::delay(Duration::from_millis(10)))?);
        reflectors.push(r);
    }
    let peers_cfg = losses
        .iter()
        .zip(&pipes)
        .map(|((s, _), p)| ((*s).to_string(), p.front_addr()))
        .collect();
    let mut cfg = config(dir.path(), ME, peers_cfg);
    cfg.probe_interval_ms = 10;
    // At a steady rate: a window counts a probe lost a loss timeout after sending it, so a sum
    // cut at window edges is biased while bursts swing the rate between windows (a young link
    // bursts on any miss; with them the 20% link read 21.3% [20.6, 22.0]).
    cfg.burst.extra = 0;
    let a = prober::start(cfg).await?;
    let mut rx = a.subscribe();
    let run = secs("AXON_BENCH_LOSS_SECS", 30);
    eprintln!("measuring loss for {run:?} …");
    let got = windows(&mut rx, run).await;
    println!("\n## Loss estimate, {run:?} at 100 Hz, loss injected one way");
    println!("| injected | probes | estimated | Wilson 95% interval | truth inside |");
    println!("|---|---|---|---|---|");
    for (site, p) in losses {
        let ws = got.get(site).cloned().unwrap_or_default();
        let lost: u32 = ws.iter().map(|w| w.report.lost).sum();
        let n: u32 = ws.iter().map(|w| w.report.lost + w.report.received).sum();
        let (lo, hi) = wilson(lost, n);
        let est = f64::from(lost) / f64::from(n.max(1));
        let inside = if lo <= p && p <= hi { "yes" } else { "no" };
        println!(
            "| {:.0}% | {n} | {:.2}% | [{:.2}%, {:.2}%] | {inside} |",
            p * 100.0,
            est * 100.0,
            lo * 100.0,
            hi * 100.0
        );
    }
    a.shutdown().await;
    for r in reflectors {
        r.shutdown().await;
    }
    drop(pipes);

    // 3. CPU of a real axon-prober process with 50 peers at 10 Hz, each peer probing it too.
    let bin = std::env::current_exe()?
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("axon-prober"))
        .context("locating axon-prober")?;
    if !bin.exists() {
        bail!(
            "{} not found: cargo build --release -p axon-prober --bins --examples",
            bin.display()
        );
    }
    let c_addr = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let mut ps = Vec::new();
    for site in &peers {
        ps.push(prober::start(config(dir.path(), site, vec![("c".into(), c_addr)])).await?);
    }
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut c_cfg = config(
        dir.path(),
        "c",
        ps.iter()
            .zip(&peers)
            .map(|(p, s)| (s.clone(), p.local_addr))
            .collect(),
    );
    c_cfg.listen = c_addr;
    c_cfg.metrics_listen = Some(metrics_addr);
    let cfg_path = dir.path().join("c.toml");
    std::fs::write(&cfg_path, c_cfg.to_toml())?;
    let mut child = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&cfg_path)
        .env("RUST_LOG", "warn")
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let run = secs("AXON_BENCH_CPU_SECS", 30);
    eprintln!("measuring prober CPU for {run:?} …");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = child.id();
    let cpu = || ops::cpu_seconds(Some(pid)).context("reading the prober's CPU time");
    let (c0, t0) = (cpu()?, Instant::now());
    tokio::time::sleep(run).await;
    let (c1, wall) = (cpu()?, t0.elapsed().as_secs_f64());
    let page = fetch(metrics_addr, "/metrics").await.unwrap_or_default();
    let up = page
        .lines()
        .filter(|l| l.starts_with("axon_peer_up{") && l.ends_with(" 1"))
        .count();
    let sent: f64 = page
        .lines()
        .filter(|l| l.starts_with("axon_probes_sent_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let _ = child.kill();
    let _ = child.wait();
    let cpu = (c1 - c0) / wall;
    println!("\n## Prober CPU, one axon-prober process, 50 peers at 10 Hz each way");
    println!("| peers up | probes sent | CPU (core-seconds per second) |");
    println!("|---|---|---|");
    println!("| {up} | {sent:.0} | {:.2}% of one core |", cpu * 100.0);
    for p in ps {
        p.shutdown().await;
    }
    Ok(())
}

/// Waits for a liveness event; false on timeout.
async fn wait_event(
    rx: &mut broadcast::Receiver<Output>,
    want: prober::LivenessEvent,
    within: Duration,
) -> bool {
    let end = Instant::now() + within;
    while let Ok(r) = tokio::time::timeout(end.saturating_duration_since(Instant::now()), rx.recv()).await {
        match r {
            Ok(Output::Liveness(l)) if l.event == want => return true,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return false,
        }
    }
    false
}

/// Runs `days` link-days of 10 Hz probes with 5% loss each way through the liveness logic;
/// returns (LinkDown events, probes).
fn simulate_false_downs(days: u64) -> (u64, u64) {
    const MS: u64 = 1_000_000;
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut unit = move || {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    };
    let mut l = prober::Liveness::new(prober::LivenessConfig::default());
    let probes = days * 864_000;
    let mut downs = 0;
    for i in 0..probes {
        let t = i * 100 * MS;
        l.on_send(i, t, true);
        let delivered = unit() >= 0.05 && unit() >= 0.05;
        if delivered {
            let rtt = 38 * MS + (unit() * 4.0 * MS as f64) as u64;
            if l.poll(t + rtt) == Some(prober::LivenessEvent::Down) {
                downs += 1;
            }
            let _ = l.on_reply(i, rtt, t + rtt);
        }
        if l.poll(t + 99 * MS) == Some(prober::LivenessEvent::Down) {
            downs += 1;
        }
    }
    (downs, probes)
}

async fn fetch(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}
