//! `axon-agent`: holds this media node's route table and serves it on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;

use agent::AgentConfig;
use clap::Parser;

/// Follows the controller's route table for this site and serves it to the media server.
#[derive(Debug, Parser)]
#[command(name = "axon-agent", version)]
struct Args {
    /// This node's name.
    #[arg(long)]
    node: Option<String>,
    /// This node's site.
    #[arg(long)]
    site: Option<String>,
    /// A controller endpoint (`http://host:port`); repeatable; replaces the config's.
    #[arg(long = "controller")]
    controllers: Vec<String>,
    /// The last-known-good table file.
    #[arg(long)]
    table_file: Option<PathBuf>,
    /// Local HTTP API address.
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Metrics-only HTTP address (/metrics, /healthz, /readyz), for Prometheus.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    daemon: ops::DaemonArgs,
}

fn effective(args: &Args) -> anyhow::Result<AgentConfig> {
    let mut cfg: AgentConfig = args.daemon.load()?;
    if let Some(n) = &args.node {
        cfg.node = n.clone();
    }
    if let Some(s) = &args.site {
        cfg.site = s.clone();
    }
    if !args.controllers.is_empty() {
        cfg.controllers = args.controllers.clone();
    }
    if let Some(p) = &args.table_file {
        cfg.table_file = p.clone();
    }
    if let Some(a) = args.http_listen {
        cfg.http_listen = a;
    }
    if let Some(a) = args.metrics_listen {
        cfg.metrics_listen = Some(a);
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
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                // SIGHUP reads the file (and this command line's flags) again: the
                // controllers, the hook, back-off and limits apply at once; a file that
                // changes what needs a restart, or does not parse, leaves the configuration
                // in force. Taken before the agent starts: SIGHUP's default action ends the
                // process.
                let hangups = ops::Hangups::take()?;
                let handle = agent::start(cfg).await?;
                hangups
                    .until_terminated(|| match effective(&args) {
                        Ok(cfg) => {
                            let _ = handle.reload(cfg);
                        }
                        Err(e) => handle.reload_refused(&format!("{e:#}")),
                    })
                    .await;
                handle.shutdown().await;
                anyhow::Ok(())
            })
    };
    ops::exit("axon-agent", run())
}
