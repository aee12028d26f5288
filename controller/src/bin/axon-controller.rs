//! `axon-controller`: computes routes from probe reports and distributes them to agents.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use controller::ControllerConfig;

/// Ingests probe reports, computes route tables, serves agents and axonctl.
#[derive(Debug, Parser)]
#[command(name = "axon-controller", version)]
struct Args {
    /// gRPC address (probe ingest, agent watch, admin).
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// HTTP address for /metrics, /healthz, /readyz.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// This replica's name (logs, `axonctl status`): replicas can share one config file.
    #[arg(long)]
    name: Option<String>,
    /// The URL probers and agents reach this replica at (`store.advertise_url`).
    #[arg(long)]
    advertise_url: Option<String>,
    /// Snapshot file for drains and the version counter.
    #[arg(long)]
    snapshot: Option<PathBuf>,
    #[command(flatten)]
    daemon: ops::DaemonArgs,
}

fn effective(args: &Args) -> anyhow::Result<ControllerConfig> {
    let mut cfg: ControllerConfig = args.daemon.load()?;
    if let Some(a) = args.grpc_listen {
        cfg.grpc_listen = a;
    }
    if let Some(a) = args.http_listen {
        cfg.http_listen = a;
    }
    if let Some(n) = &args.name {
        cfg.name.clone_from(n);
    }
    if let Some(u) = &args.advertise_url {
        cfg.store.advertise_url = Some(u.clone());
    }
    if let Some(p) = &args.snapshot {
        cfg.store.snapshot = Some(p.clone());
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
        ops::init_logging(args.daemon.log_json);
        tokio::runtime::Runtime::new()?.block_on(async {
            // SIGHUP reads the file (and this command line's flags) again; a file that does
            // not parse, or changes what needs a restart, leaves the configuration in force.
            // Taken before the daemon serves: SIGHUP's default action ends the process.
            let hangups = ops::Hangups::take()?;
            let handle = controller::start(cfg).await?;
            hangups
                .until_terminated(|| match effective(&args) {
                    Ok(cfg) => {
                        let _ = handle.reload(cfg);
                    }
                    Err(e) => handle.shared.reload_refused(&format!("{e:#}")),
                })
                .await;
            handle.shutdown().await;
            anyhow::Ok(())
        })
    };
    ops::exit("axon-controller", run())
}
