//! `axon-prober`: probes every peer site over QUIC and reports to the controller.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use prober::{PeerConfig, ProberConfig};

/// Measures RTT, loss and jitter to every peer site and reports them to the controller.
#[derive(Debug, Parser)]
#[command(name = "axon-prober", version)]
struct Args {
    /// This prober's site id.
    #[arg(long)]
    site: Option<String>,
    /// UDP address of the QUIC endpoint.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP address for /metrics and /healthz.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// A peer to probe, `SITE=ADDR`; repeatable; replaces the config's peers.
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<PeerConfig>,
    /// A controller endpoint (`http://host:port`); repeatable; replaces the config's.
    #[arg(long = "controller")]
    controllers: Vec<String>,
    /// Interval between probes to one peer, ms.
    #[arg(long)]
    probe_interval_ms: Option<u64>,
    /// CA certificate (PEM).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This prober's certificate (PEM).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// This prober's private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    #[command(flatten)]
    daemon: ops::DaemonArgs,
}

fn parse_peer(s: &str) -> Result<PeerConfig, String> {
    let (site, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected SITE=ADDR, got {s:?}"))?;
    let addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    Ok(PeerConfig {
        site: site.to_string(),
        addr,
    })
}

fn effective(args: &Args) -> anyhow::Result<ProberConfig> {
    let mut cfg: ProberConfig = args.daemon.load()?;
    if let Some(s) = &args.site {
        cfg.site = s.clone();
    }
    if let Some(a) = args.listen {
        cfg.listen = a;
    }
    if let Some(a) = args.metrics_listen {
        cfg.metrics_listen = Some(a);
    }
    if !args.peers.is_empty() {
        cfg.peers = args.peers.clone();
    }
    if !args.controllers.is_empty() {
        cfg.report.endpoints = args.controllers.clone();
    }
    if let Some(i) = args.probe_interval_ms {
        cfg.probe_interval_ms = i;
    }
    if let Some(p) = &args.ca {
        cfg.tls.ca = p.clone();
    }
    if let Some(p) = &args.cert {
        cfg.tls.cert = p.clone();
    }
    if let Some(p) = &args.key {
        cfg.tls.key = p.clone();
    }
    Ok(cfg)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let run = || -> anyhow::Result<()> {
        let cfg = effective(&args)?;
        if args.daemon.inspect(&cfg)? {
            return Ok(());
        }
        let runtime = if cfg.worker_threads <= 1 {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cfg.worker_threads)
                .enable_all()
                .build()?
        };
        runtime.block_on(run(args, cfg))
    };
    ops::exit("axon-prober", run())
}

async fn run(args: Args, cfg: ProberConfig) -> anyhow::Result<()> {
    ops::init_logging(args.daemon.log_json);
    // SIGHUP reads the file (and this command line's flags) again and applies a change of
    // `peers`; anything else, or a file that does not parse, leaves the configuration in
    // force. Taken before the prober starts: SIGHUP's default action ends the process.
    let hangups = ops::Hangups::take()?;
    let mut prober = prober::start(cfg).await?;
    hangups
        .until_terminated(|| match effective(&args) {
            Ok(cfg) => {
                let _ = prober.reload(cfg);
            }
            Err(e) => prober.reload_refused(&format!("{e:#}")),
        })
        .await;
    prober.shutdown().await;
    Ok(())
}
