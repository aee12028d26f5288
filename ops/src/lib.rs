//! What every Axon daemon needs to be operated, in one place: its configuration file and the
//! flags that print or check it ([`DaemonArgs`], [`DaemonConfig`]), structured logs
//! ([`init_logging`]), graceful termination ([`terminated`]), a one-line error and exit code
//! for `main` ([`exit`]), the Prometheus text exposition ([`render`]), durable file writes
//! ([`write_atomically`]), the wall clock in Unix milliseconds ([`unix_ms`]) and CPU time, the
//! process's ([`cpu_seconds`]) and the machine's ([`HostCpu`]), and the TLS files' expiry and
//! rotation ([`tls`]).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{Encoder, Registry, TextEncoder};

mod config;
pub mod tls;
pub use config::{ConfigError, DaemonArgs, DaemonConfig};

/// Logs to stderr, human-readable or as JSON lines; `RUST_LOG` filters (default `info`).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // stderr, as documented: stdout is the programs' own output (the lab's live view and
    // report, axonctl's answers), and tracing's default writer is stdout.
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init();
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}

/// SIGHUP, taken over from its default action (which ends the process): a daemon that
/// reloads its configuration on it takes this before it starts serving.
pub struct Hangups(tokio::signal::unix::Signal);

impl Hangups {
    /// Installs the handler.
    ///
    /// # Errors
    /// When the signal cannot be handled (no tokio runtime with signals enabled).
    pub fn take() -> std::io::Result<Self> {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map(Hangups)
    }

    /// Runs until SIGTERM or Ctrl-C, calling `reload` on every SIGHUP in between.
    pub async fn until_terminated(mut self, mut reload: impl FnMut()) {
        let terminated = terminated();
        tokio::pin!(terminated);
        loop {
            tokio::select! {
                () = &mut terminated => return,
                _ = self.0.recv() => reload(),
            }
        }
    }
}

/// Turns `main`'s result into an exit code, printing a failure as one line: `name: error`.
pub fn exit<E: std::fmt::Display>(name: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The Prometheus text exposition of a registry.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        return format!("# encoding failed: {e}\n");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Registers a metric defined in code and returns it; a failure (an invalid or duplicate name)
/// is a programming error caught by every test that builds the daemon's metrics.
pub fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("metric definitions are static and valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are static and unique");
    metric
}

/// Registers the process metrics every exporter is expected to have, under their standard
/// names — `process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_open_fds`, `process_threads`, `process_start_time_seconds` — read from `/proc`
/// at each scrape, and `axon_build_info{version}` (always 1): dashboards and alerts see a
/// restart, a leak or a starved daemon, and which build runs where.
pub fn register_process(registry: &Registry, version: &str) {
    let collector = ProcessCollector::new(version);
    registry
        .register(Box::new(collector))
        .expect("process metric names are static and unique");
}

/// See [`register_process`]. Off Linux the `/proc` readings are left out; the start time and
/// build info remain.
struct ProcessCollector {
    cpu: prometheus::Counter,
    rss: prometheus::IntGauge,
    fds: prometheus::IntGauge,
    threads: prometheus::IntGauge,
    start: prometheus::Gauge,
    build: prometheus::IntGaugeVec,
    descs: Vec<prometheus::core::Desc>,
}

impl ProcessCollector {
    fn new(version: &str) -> Self {
        let build = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("axon_build_info", "1, labelled with the running build's version."),
            &["version"],
        )
        .expect("static definition");
        build.with_label_values(&[version]).set(1);
        let c = ProcessCollector {
            cpu: prometheus::Counter::new("process_cpu_seconds_total", "User and system CPU time, seconds.")
                .expect("static definition"),
            rss: prometheus::IntGauge::new("process_resident_memory_bytes", "Resident memory, bytes.")
                .expect("static definition"),
            fds: prometheus::IntGauge::new("process_open_fds", "Open file descriptors.")
                .expect("static definition"),
            threads: prometheus::IntGauge::new("process_threads", "Threads.").expect("static definition"),
            start: prometheus::Gauge::new(
                "process_start_time_seconds",
                "When the daemon's metrics were set up, Unix seconds: a change is a restart.",
            )
            .expect("static definition"),
            build,
            descs: Vec::new(),
        };
        c.start.set(unix_ms() as f64 / 1000.0);
        let mut c = c;
        c.descs = [
            c.cpu.desc(),
            c.rss.desc(),
            c.fds.desc(),
            c.threads.desc(),
            c.start.desc(),
            c.build.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        c
    }
}

/// A `kB` field of `/proc/self/status` (`VmRSS`) or a count (`Threads`).
fn status_field(status: &str, name: &str) -> Option<i64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..]
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut out = Vec::new();
        if let Some(now) = cpu_seconds(None) {
            let seen = self.cpu.get();
            if now > seen {
                self.cpu.inc_by(now - seen);
            }
            out.extend(self.cpu.collect());
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            if let Some(kb) = status_field(&status, "VmRSS") {
                self.rss.set(kb.saturating_mul(1024));
                out.extend(self.rss.collect());
            }
            if let Some(n) = status_field(&status, "Threads") {
                self.threads.set(n);
                out.extend(self.threads.collect());
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(dir.count() as i64);
            out.extend(self.fds.collect());
        }
        out.extend(self.start.collect());
        out.extend(self.build.collect());
        out
    }
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync, rename, fsync of
/// the directory. A crash leaves the old file or the new one, never a torn one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// CPU time (user + system) a process has used, seconds: `None` for this process. `None` when
/// `/proc` cannot tell (not Linux, or the process is gone). Benchmarks and the lab report it.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = pid.map_or_else(|| "/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'; utime and
    // stime are fields 14 and 15 of the line, 12 and 13 after it, in clock ticks (USER_HZ 100).
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
}

/// The whole machine's CPU time, clock ticks over every core since boot: a run's share of it
/// that a hypervisor gave other guests (steal) tells a lab report read on a busy virtual
/// machine from one read on a quiet host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCpu {
    /// Every tick accounted: user, nice, system, idle, iowait, irq, softirq and steal.
    pub total: u64,
    /// Ticks the hypervisor ran something else while this machine had work (steal).
    pub steal: u64,
}

impl HostCpu {
    /// Reads `/proc/stat`; `None` when it cannot tell (not Linux).
    pub fn now() -> Option<HostCpu> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// From the text of `/proc/stat`: its first line, `cpu  user nice system idle iowait irq
    /// softirq steal …` (guest time is counted in user already, so it is left out).
    pub fn parse(stat: &str) -> Option<HostCpu> {
        let line = stat.lines().next()?;
        let mut f = line.split_whitespace();
        if f.next()? != "cpu" {
            return None;
        }
        let v: Vec<u64> = f.take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
        if v.len() < 8 {
            return None;
        }
        Some(HostCpu {
            total: v.iter().sum(),
            steal: v[7],
        })
    }

    /// The share of the machine's CPU time stolen between `earlier` and this reading, 0–1
    /// (0 when no time passed).
    pub fn steal_share_since(&self, earlier: &HostCpu) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.steal.saturating_sub(earlier.steal) as f64 / total as f64
    }
}

/// The wall clock, Unix milliseconds (0 before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Fails if a field is read from the wrong column, guest time is counted twice, or a line
    /// that is not the machine's total is taken for it.
    #[test]
    fn the_host_s_steal_share_is_read_from_its_column_of_proc_stat() {
        let before =
            HostCpu::parse("cpu  100 0 50 800 10 0 5 35 20 0\ncpu0 50 0 25 400 5 0 2 18 10 0\n").unwrap();
        assert_eq!(
            before,
            HostCpu {
                total: 1000,
                steal: 35
            }
        );
        let after = HostCpu::parse("cpu  200 0 100 1385 20 0 10 285 40 0\n").unwrap();
        assert!((after.steal_share_since(&before) - 0.25).abs() < 1e-9);
        assert_eq!(before.steal_share_since(&before), 0.0);
        assert_eq!(HostCpu::parse("cpu0 1 2 3 4 5 6 7 8\n"), None);
        assert_eq!(HostCpu::parse("cpu  1 2 3\n"), None);
        assert!(
            HostCpu::now().is_some_and(|h| h.total > 0),
            "/proc/stat unreadable"
        );
    }

    #[test]
    fn process_metrics_are_read_at_each_scrape_under_their_standard_names() {
        let registry = Registry::new();
        register_process(&registry, "1.2.3");
        let first = render(&registry);
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_threads ",
            "process_start_time_seconds ",
            "axon_build_info{version=\"1.2.3\"} 1",
        ] {
            assert!(first.contains(name), "{name} missing from:\n{first}");
        }
        let value = |text: &str, name: &str| -> f64 {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap();
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value(&first, "process_resident_memory_bytes") > 1_000_000.0);
        // CPU time only grows, and is read again at the next scrape: work until /proc counts
        // another tick (10 ms), within a generous deadline.
        let before = value(&first, "process_cpu_seconds_total");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut x = 0u64;
        while cpu_seconds(None).unwrap() <= before && std::time::Instant::now() < deadline {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let second = render(&registry);
        assert!(value(&second, "process_cpu_seconds_total") > value(&first, "process_cpu_seconds_total"));
        assert_eq!(status_field("Name:\tx\nVmRSS:\t  2048 kB\n", "VmRSS"), Some(2048));
        assert_eq!(status_field("Threads:\t7\n", "Threads"), Some(7));
    }

    #[test]
    fn an_atomic_write_replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("table.pb");
        write_atomically(&path, b"first, longer content").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {}
        assert!(cpu_seconds(None).unwrap() > 0.0);
        assert_eq!(cpu_seconds(Some(u32::MAX)), None);
    }

    #[test]
    fn registered_metrics_are_rendered() {
        let r = Registry::new();
        let c = register(
            &r,
            prometheus::IntCounter::new("axon_test_total", "A test counter."),
        );
        c.inc_by(3);
        assert!(render(&r).contains("axon_test_total 3"));
    }
}
