//! A daemon's TLS files over its life: when their certificates expire (exported, so that an
//! alert warns weeks before handshakes start to fail), and when they were replaced (loaded
//! without a signal, so a renewal by a certificate manager or a Kubernetes secret update
//! needs no one to send `SIGHUP`).

use std::time::Duration;

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use proto::auth::{TlsFiles, TlsWatch};
use tracing::{info, warn};

use crate::register;

/// The TLS metrics every daemon exports.
#[derive(Clone)]
pub struct TlsMetrics {
    /// `axon_tls_certificate_expiry_timestamp_seconds{file}`: when the certificates in the
    /// files in force expire (`cert`: this daemon's own chain; `ca`: the CAs it trusts).
    expiry: IntGaugeVec,
    /// `axon_tls_file_changes_total{result}`: replaced files found by the periodic check,
    /// by whether they loaded.
    changes: IntCounterVec,
}

impl TlsMetrics {
    /// Creates the metrics in `registry`, at zero changes and no expiry yet.
    pub fn register(registry: &Registry) -> Self {
        let m = TlsMetrics {
            expiry: register(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "axon_tls_certificate_expiry_timestamp_seconds",
                        "When the earliest certificate in a TLS file in force expires (file: cert, this daemon's chain; ca, the CAs it trusts), Unix seconds.",
                    ),
                    &["file"],
                ),
            ),
            changes: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "axon_tls_file_changes_total",
                        "Replaced TLS files found by the periodic check, by result: loaded, or refused (the files in force stay).",
                    ),
                    &["result"],
                ),
            ),
        };
        for r in ["loaded", "refused"] {
            m.changes.with_label_values(&[r]);
        }
        m
    }

    /// Counts a replacement of TLS files found by a periodic check: loaded, or refused (the
    /// files in force stay).
    pub fn count_change(&self, loaded: bool) {
        let result = if loaded { "loaded" } else { "refused" };
        self.changes.with_label_values(&[result]).inc();
    }

    /// Sets the expiry gauges from `files` (the files now in force). Files whose certificates
    /// do not parse leave the gauges as they were, and are logged.
    pub fn observe(&self, files: &TlsFiles) {
        match files.expiry() {
            Ok(e) => {
                self.expiry.with_label_values(&["cert"]).set(e.cert);
                self.expiry.with_label_values(&["ca"]).set(e.ca);
            }
            Err(e) => warn!(error = %e, "cannot read the certificates' expiry"),
        }
    }

    /// Sets the expiry gauge of one more file in force under its own `file` label (the
    /// controller's etcd client files: `etcd_cert`, `etcd_ca`), so the expiry alerts cover it
    /// too. A file whose certificates do not parse leaves the gauge as it was, and is logged.
    pub fn observe_file(&self, label: &str, path: &std::path::Path) {
        match proto::auth::earliest_expiry(path) {
            Ok(t) => self.expiry.with_label_values(&[label]).set(t),
            Err(e) => warn!(file = label, error = %e, "cannot read the certificates' expiry"),
        }
    }

    /// The expiry exported for `file` (`cert`, `ca`, or a label of
    /// [`TlsMetrics::observe_file`]), if any yet.
    pub fn expiry(&self, file: &str) -> Option<i64> {
        self.expiry
            .get_metric_with_label_values(&[file])
            .ok()
            .map(|g| g.get())
            .filter(|t| *t != 0)
    }
}

/// Reads `files` every [`TlsFiles::recheck_s`] for as long as the returned future runs (a
/// daemon drops it at shutdown). When their contents changed and then stayed the same for one
/// more check, `load` is called to read them again and put them in force; the result is
/// counted and logged, and the expiry gauges follow the files that loaded. Contents that do
/// not load are not tried again until they change. Returns at once when `recheck_s` is 0.
pub async fn watch(files: TlsFiles, metrics: TlsMetrics, mut load: impl FnMut() -> Result<(), String>) {
    if files.recheck_s == 0 {
        return;
    }
    let period = Duration::from_secs(files.recheck_s);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = TlsWatch::new(files);
    loop {
        ticks.tick().await;
        if !watch.check() {
            continue;
        }
        match load() {
            Ok(()) => {
                metrics.count_change(true);
                metrics.observe(watch.files());
                info!("TLS files replaced: new connections use them");
            }
            Err(e) => {
                metrics.count_change(false);
                warn!(error = %e, "TLS files replaced, but they do not load; the ones in force stay");
            }
        }
    }
}
