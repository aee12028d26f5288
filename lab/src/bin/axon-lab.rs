//! `axon-lab`: runs a whole Axon mesh on this machine from a scenario file and reports.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Runs a whole Axon mesh on this machine from a scenario file, with its fault timeline, and
/// reports how Axon did.
#[derive(Debug, Parser)]
#[command(name = "axon-lab", version)]
struct Args {
    /// The scenario (TOML).
    #[arg(long)]
    scenario: PathBuf,
    /// Overrides the scenario's duration, seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Writes the report as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Seed of the emulator's random generators.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Serve every daemon's metrics on loopback and write Prometheus file targets for them
    /// in this directory (e.g. the `targets/` of a copy of deploy/prometheus/).
    #[arg(long)]
    prometheus_targets: Option<PathBuf>,
    /// Only check the scenario and print what it holds.
    #[arg(long)]
    check: bool,
    /// Exit with an error when the run misses one of the scenario's targets (after printing
    /// and writing the report): a gate for a pipeline that must not let Axon get worse.
    #[arg(long)]
    strict: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    // The daemons' own logs, on stderr, only when asked for: the live view owns the terminal.
    if std::env::var_os("RUST_LOG").is_some() {
        ops::init_logging(false);
    }
    let run = || -> anyhow::Result<()> {
        let s = lab::Scenario::load(&args.scenario)?;
        println!(
            "scenario {}: {} sites, {} s at {} Hz, {} faults",
            s.name,
            s.world.inventory.len(),
            args.duration.unwrap_or(s.run.duration_s),
            s.run.probe_hz,
            s.faults.len()
        );
        for f in &s.faults {
            println!(
                "  at {:>6.1} s  {} {}",
                f.spec.at_s,
                f.spec.kind.as_str(),
                f.spec.target
            );
        }
        if args.check {
            return Ok(());
        }
        let opts = lab::Options {
            duration_s: args.duration,
            seed: args.seed,
            live: true,
            prometheus_targets: args.prometheus_targets.clone(),
        };
        // Stopped by Ctrl-C or SIGTERM, the run is dropped rather than the process killed
        // where it stands: its mesh stops, its etcd (scenarios with several controllers) is
        // killed and its temporary directory removed, none left behind.
        let report = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(async {
                tokio::select! {
                    r = lab::run(&s, &opts) => r.map_err(anyhow::Error::from),
                    () = ops::terminated() => Err(anyhow::anyhow!("interrupted; nothing reported")),
                }
            })?;
        println!("\n{}", report.text());
        if let Some(path) = &args.report {
            let json = serde_json::to_string_pretty(&report)?;
            std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
            println!("report written to {}", path.display());
        }
        let missed = report.missed_targets();
        if args.strict && !missed.is_empty() {
            anyhow::bail!("targets missed: {}", missed.join(", "));
        }
        Ok(())
    };
    ops::exit("axon-lab", run())
}
