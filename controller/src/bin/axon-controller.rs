//! `axon-controller`: computes routes from probe reports and distributes them to agents.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use controller::ControllerConfig;

/// Ingests probe reports, computes route tables, serves agents and axonctl.
#[derive(Debug, Parser)]
#[command(name = "axon-controller", version)]
struct Args {
    /// TOML configuration file; flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
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
    /// Log as JSON lines instead of human text.
    #[arg(long)]
    log_json: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Check the effective configuration and exit: 0 when the daemon would start with it,
    /// else the first problem (files it names are not read; addresses are not bound).
    #[arg(long)]
    check_config: bool,
}

fn effective(args: &Args) -> anyhow::Result<ControllerConfig> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            ControllerConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => ControllerConfig::default(),
    };
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
        if args.print_config {
            print!("{}", cfg.to_toml());
            return Ok(());
        }
        if args.check_config {
            cfg.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("configuration ok");
            return Ok(());
        }
        ops::init_logging(args.log_json);
        tokio::runtime::Runtime::new()?.block_on(async {
            let handle = controller::start(cfg).await?;
            ops::terminated().await;
            handle.shutdown().await;
            anyhow::Ok(())
        })
    };
    ops::exit("axon-controller", run())
}
