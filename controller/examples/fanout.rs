//! Fan-out: one `axon-controller` process, 10,000 agent `Watch` streams from this process on
//! loopback, and one change that touches every site. Prints the time until every stream has
//! acknowledged the new table (median of several changes) and the controller's RSS.
//!
//! `cargo build --release -p axon-controller --bins --examples && target/release/examples/fanout`
//! Environment: `AXON_FANOUT_AGENTS` (default 10000), `AXON_FANOUT_CONNS` (TCP connections the
//! streams share, default one per agent), `AXON_FANOUT_SITES` (default 200),
//! `AXON_FANOUT_CHANGES` (default 6), `AXON_FANOUT_LOG` (the controller's `RUST_LOG`, default
//! `warn`), `AXON_FANOUT_CHANGE` (`drain`, the default: drains
//! and undrains, which every site's update carries; `link`: the link s000 ↔ s001 cut and
//! healed in turn, which moves a few sites' paths, while the others' updates stand).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;
use proto::v1::probe_ingest_client::ProbeIngestClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A one-second window of `from` → `to` ending at `end_ms`: `received` of 10 probes answered,
/// `rtt` ms of round trip.
fn window(from: &str, to: &str, end_ms: u64, received: u32, rtt: f64) -> pb::LinkWindow {
    pb::LinkWindow {
        from: from.to_string(),
        to: to.to_string(),
        start_unix_ms: end_ms - 1_000,
        end_unix_ms: end_ms,
        sent: 10,
        received,
        rtt_p50_ms: rtt,
        rtt_p90_ms: rtt,
        rtt_p99_ms: rtt,
        connected: true,
        ..Default::default()
    }
}

/// Reports `windows` as prober `instance` of `site` would, and waits for the controller's
/// ack of the last.
async fn report(url: &str, site: &str, instance: u64, windows: Vec<pb::LinkWindow>) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(windows.len() + 1);
    tx.send(pb::ProberMessage {
        body: Some(pb::prober_message::Body::Hello(pb::ProberHello {
            site: site.to_string(),
            instance,
            software: "bench".into(),
        })),
    })
    .await?;
    let last = windows.len() as u64;
    for (seq, w) in (1..).zip(windows) {
        tx.send(pb::ProberMessage {
            body: Some(pb::prober_message::Body::Report(pb::ProbeReport {
                seq,
                body: Some(pb::probe_report::Body::Window(w)),
            })),
        })
        .await?;
    }
    drop(tx);
    let mut acks = ProbeIngestClient::connect(url.to_string())
        .await?
        .report(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(a) = acks.message().await? {
        if a.acked_through == last {
            break;
        }
    }
    Ok(())
}

/// `GET /metrics` of the controller's HTTP listener, as text.
async fn metrics_page(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// What the load generator reads of an update: its version and nonce. Real agents decode the
/// whole update on their own machines; here every stream shares two cores with the controller,
/// so decoding 10,000 full updates would measure the load generator, not the controller.
#[derive(Clone, PartialEq, prost::Message)]
struct UpdateHead {
    #[prost(message, optional, tag = "1")]
    version: Option<pb::TableVersion>,
    #[prost(string, tag = "2")]
    nonce: String,
}

/// The version each agent acknowledged last, by agent.
type Acked = Arc<Vec<AtomicU64>>;

/// Waits until every agent has acknowledged `version` or later; returns the time since `t0`.
async fn all_acked(acked: &Acked, version: u64, t0: Instant, limit: Duration) -> anyhow::Result<Duration> {
    loop {
        let behind = acked
            .iter()
            .filter(|a| a.load(Ordering::Acquire) < version)
            .count();
        if behind == 0 {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > limit {
            bail!(
                "{behind} of {} agents have not acknowledged version {version}",
                acked.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let agents = env("AXON_FANOUT_AGENTS", 10_000);
    let conns = env("AXON_FANOUT_CONNS", agents).clamp(1, agents);
    let n_sites = env("AXON_FANOUT_SITES", 200).max(8);
    let link_mode = std::env::var("AXON_FANOUT_CHANGE").is_ok_and(|v| v == "link");
    let changes = env("AXON_FANOUT_CHANGES", 6);
    let dir = tempfile::tempdir()?;

    // The controller, as its own process.
    let bin = std::env::current_exe()?
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("axon-controller"))
        .context("locating axon-controller")?;
    if !bin.exists() {
        bail!(
            "{} not found: cargo build --release -p axon-controller --bins --examples",
            bin.display()
        );
    }
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let sites: Vec<String> = (0..n_sites).map(|i| format!("s{i:03}")).collect();
    let mut toml = format!(
        "grpc_listen = \"{grpc}\"\nhttp_listen = \"{http}\"\nresync_ms = 600000\n\n[guardrails]\nmin_active_regions = 1\n\n[links]\nstale_after_ms = 3600000\n\n"
    );
    for (i, s) in sites.iter().enumerate() {
        let (lat, lon) = (
            (i as f64 * 37.0) % 140.0 - 70.0,
            (i as f64 * 71.0) % 360.0 - 180.0,
        );
        toml += &format!(
            "[[sites]]\nid = \"{s}\"\nregion = \"r{}\"\nlat = {lat}\nlon = {lon}\n\n",
            i / 4
        );
    }
    let cfg_path = dir.path().join("controller.toml");
    std::fs::write(&cfg_path, toml)?;
    let mut child = std::process::Command::new(&bin)
        .arg("--config")
        .arg(&cfg_path)
        .env(
            "RUST_LOG",
            std::env::var("AXON_FANOUT_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let url = format!("http://{grpc}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut admin = loop {
        match AdminClient::connect(url.clone()).await {
            Ok(a) => break a,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => bail!("controller did not start: {e}"),
        }
    };

    // Measurements for every link, as probers would send them: RTT from the positions.
    eprintln!("feeding {} links …", n_sites * (n_sites - 1));
    for (i, from) in sites.iter().enumerate() {
        let windows = sites
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(j, to)| {
                let rtt = 5.0 + ((i * 7 + j * 13) % 200) as f64 + (i as f64 - j as f64).abs() * 0.5;
                window(from, to, now_ms(), 10, rtt)
            })
            .collect();
        report(&url, from, 1, windows).await?;
    }
    let first = loop {
        let s = admin.status(pb::StatusRequest {}).await?.into_inner();
        if s.links_up as usize == n_sites * (n_sites - 1) {
            break s.table.map_or(0, |t| t.version);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let routes = admin
        .routes(pb::RoutesRequest {
            from: sites[0].clone(),
            to: String::new(),
        })
        .await?
        .into_inner();
    eprintln!("table {first}: {} rows per site", routes.rows.len());

    // The agents.
    eprintln!("connecting {agents} agents over {conns} connections …");
    let t_connect = Instant::now();
    let mut channels = Vec::with_capacity(conns);
    for _ in 0..conns {
        channels.push(
            tonic::transport::Endpoint::from_shared(url.clone())?
                .connect()
                .await?,
        );
    }
    let acked: Acked = Arc::new((0..agents).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..agents {
        let channel = channels[i % conns].clone();
        let site = sites[i % n_sites].clone();
        let acked = acked.clone();
        tasks.spawn(async move {
            let (tx, rx) = mpsc::channel(4);
            let hello = pb::AgentHello {
                node: format!("node-{i}"),
                site,
                applied: None,
                software: "bench".into(),
            };
            tx.send(pb::AgentMessage {
                body: Some(pb::agent_message::Body::Hello(hello)),
            })
            .await?;
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await?;
            let path =
                tonic::codegen::http::uri::PathAndQuery::from_static("/axon.v1.RouteDistribution/Watch");
            let codec = tonic_prost::ProstCodec::<pb::AgentMessage, UpdateHead>::default();
            let mut updates = grpc
                .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
                .await?
                .into_inner();
            while let Some(u) = updates.message().await? {
                let v = u.version.as_ref().map_or(0, |v| v.version);
                tx.send(pb::AgentMessage {
                    body: Some(pb::agent_message::Body::Ack(pb::Ack {
                        version: u.version,
                        nonce: u.nonce,
                    })),
                })
                .await?;
                acked[i].fetch_max(v, Ordering::AcqRel);
            }
            anyhow::Ok(())
        });
    }
    all_acked(&acked, first, t_connect, Duration::from_secs(300)).await?;
    eprintln!("{agents} agents on table {first} after {:?}", t_connect.elapsed());
    let rss_idle = rss_mb(child.id());

    // The changes: drain and undrain a site in turn; each makes a new table for every site.
    // An undrain is one publication. A drain is two (make before break: paths around the site
    // first, then the site marked unready once the agents hold them), so for drains both the
    // first publication and the whole drain are timed.
    let mut first_acked = Vec::new();
    let mut drains_done = Vec::new();
    for k in 0..changes {
        // The links are measured once and kept fresh (`stale_after_ms`), so nothing but the
        // changes moves the table; start each from a table every agent holds.
        let version = admin
            .status(pb::StatusRequest {})
            .await?
            .into_inner()
            .table
            .map_or(0, |t| t.version);
        all_acked(&acked, version, Instant::now(), Duration::from_secs(120)).await?;
        let drain = k % 2 == 0;
        if link_mode {
            // Three windows each way, every probe lost (a cut: down after two), or every
            // probe answered (the heal, taken back once the better path has won its margin).
            let t0 = Instant::now();
            let received = if drain { 0 } else { 10 };
            let end = now_ms();
            for (from, to) in [(&sites[0], &sites[1]), (&sites[1], &sites[0])] {
                let windows = (0..3)
                    .map(|w| window(from, to, end - 2_000 + w * 1_000, received, 50.0))
                    .collect();
                report(&url, from, 2 + k as u64, windows).await?;
            }
            let one = all_acked(&acked, version + 1, t0, Duration::from_secs(120)).await?;
            let what = if drain { "cut" } else { "heal" };
            eprintln!("change {k} (link {what}): all {agents} acked the next table after {one:?}");
            first_acked.push(one.as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let site = sites[(k / 2) * 4 % n_sites].clone();
        let mut admin = admin.clone();
        let t0 = Instant::now();
        let call = tokio::spawn(async move {
            let v = if drain {
                admin
                    .drain(pb::DrainRequest {
                        kind: "site".into(),
                        name: site,
                        reason: "bench".into(),
                        author: "bench".into(),
                        force: true,
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .version
            } else {
                admin
                    .undrain(pb::UndrainRequest {
                        kind: "site".into(),
                        name: site,
                        author: "bench".into(),
                    })
                    .await?
                    .into_inner()
                    .version
            };
            anyhow::Ok(v.map_or(0, |v| v.version))
        });
        let one = all_acked(&acked, version + 1, t0, Duration::from_secs(120)).await?;
        let v = call.await??;
        let done = all_acked(&acked, v, t0, Duration::from_secs(120)).await?;
        let what = if drain { "drain" } else { "undrain" };
        eprintln!(
            "change {k} ({what}, table {v}): all {agents} acked its first table after {one:?}, the last after {done:?}"
        );
        first_acked.push(one.as_secs_f64() * 1e3);
        if drain {
            drains_done.push(done.as_secs_f64() * 1e3);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let rss = rss_mb(child.id());
    // The controller's own account of its publications: from a computation's end to the
    // table in force.
    let page = metrics_page(http).await.unwrap_or_default();
    let read = |name: &str| {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let (sum, count) = (
        read("axon_route_publish_seconds_sum "),
        read("axon_route_publish_seconds_count "),
    );
    eprintln!(
        "publications: {count} in all, {:.1} ms each on average (axon_route_publish_seconds)",
        sum / count * 1e3
    );
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |i: usize| v.get(i).copied().unwrap_or(f64::NAN);
        (at(v.len() / 2), at(0), at(v.len().saturating_sub(1)))
    };
    let (p50, lo, hi) = stats(&mut first_acked);
    let (d50, dlo, dhi) = stats(&mut drains_done);
    println!(
        "\n## Fan-out: {agents} Watch streams over {conns} connections, {n_sites} sites ({} rows per update)",
        routes.rows.len()
    );
    println!(
        "| changes | one publication all acked: median (min–max) | drain complete: median (min–max) | controller RSS idle | after changes |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| {changes} | {p50:.0} ms ({lo:.0}–{hi:.0}) | {d50:.0} ms ({dlo:.0}–{dhi:.0}) | {rss_idle:.0} MB | {rss:.0} MB |"
    );
    tasks.abort_all();
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}
