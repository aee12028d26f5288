//! Helpers shared by the prober's integration tests: certificates, configs, waiting on events.

#![allow(dead_code, clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use prober::tls::{generate_mesh, mesh_files};
use prober::{Output, PeerConfig, ProberConfig};
use tokio::sync::broadcast;

/// A temporary directory with a CA and certificates for `sites`.
pub fn certs(sites: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    generate_mesh(dir.path(), sites).unwrap();
    dir
}

/// A prober config on loopback with OS-chosen ports.
pub fn config(dir: &Path, site: &str, peers: &[(&str, SocketAddr)]) -> ProberConfig {
    ProberConfig {
        site: site.into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        tls: mesh_files(dir, site),
        peers: peers
            .iter()
            .map(|(s, a)| PeerConfig {
                site: (*s).into(),
                addr: *a,
            })
            .collect(),
        redial_min_ms: 50,
        redial_max_ms: 500,
        ..Default::default()
    }
}

/// Waits until `f` accepts an output, or panics after `within`.
pub async fn wait_for<T>(
    rx: &mut broadcast::Receiver<Output>,
    within: Duration,
    what: &str,
    mut f: impl FnMut(&Output) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(o)) => {
                if let Some(t) = f(&o) {
                    return t;
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => panic!("output channel closed while waiting for {what}: {e}"),
            Err(_) => panic!("no {what} within {within:?}"),
        }
    }
}

/// Polls `f` until it is true, or panics after `within`.
pub async fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not true within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs a path over plain HTTP/1.1 and returns the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of a metric line `name{labels} value` in a Prometheus text page.
pub fn metric(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}
