//! The `axon-prober` binary on SIGHUP: a new peer in the file is measured without a restart;
//! a file that changes anything else, or does not parse, is refused and the prober goes on.
//! `/readyz` says how many peers answer.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::process::Command;
use std::time::Duration;

use common::{certs, config, http_get, metric};
use prober::tls::mesh_files;

fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

/// A metric of the prober's page, polled until `want` holds (30 s at most).
async fn until(http: std::net::SocketAddr, series: &str, want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = match tokio::net::TcpStream::connect(http).await {
            Ok(_) => http_get(http, "/metrics").await,
            Err(_) => String::new(),
        };
        if metric(&page, series) == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not within 30 s: {series} = {want}; page:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_peer_and_refuses_what_needs_a_restart() {
    let dir = certs(&["a", "b"]);
    let b = prober::start(config(dir.path(), "b", &[])).await.unwrap();
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let tls = mesh_files(dir.path(), "a");
    let base = format!(
        "site = \"a\"\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"{http}\"\n\
         [tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
        tls.ca, tls.cert, tls.key
    );
    let path = dir.path().join("prober.toml");
    std::fs::write(&path, &base).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_axon-prober"))
        .arg("--config")
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until(http, "axon_prober_peers", 0.0).await;
    let ready = http_get(http, "/readyz").await;
    assert_eq!(
        ready,
        "ready: 0 of 0 peers answer; report stream not configured\n"
    );

    // b added to the file: measured after the signal, by the same process.
    let with_b = format!("{base}[[peers]]\nsite = \"b\"\naddr = \"{}\"\n", b.local_addr);
    std::fs::write(&path, &with_b).unwrap();
    signal(&child, "-HUP");
    until(http, "axon_prober_config_reloads_total{result=\"applied\"}", 1.0).await;
    until(http, "axon_peer_up{peer=\"b\"}", 1.0).await;
    let ready = http_get(http, "/readyz").await;
    assert!(ready.starts_with("ready: 1 of 1 peers answer"), "{ready}");

    // A restart-only change, then a file that does not parse: refused, b still measured.
    std::fs::write(
        &path,
        with_b.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\""),
    )
    .unwrap();
    signal(&child, "-HUP");
    until(http, "axon_prober_config_reloads_total{result=\"refused\"}", 1.0).await;
    std::fs::write(&path, "this is not toml").unwrap();
    signal(&child, "-HUP");
    until(http, "axon_prober_config_reloads_total{result=\"refused\"}", 2.0).await;
    until(http, "axon_prober_peers", 1.0).await;
    until(http, "axon_peer_up{peer=\"b\"}", 1.0).await;
    assert!(child.try_wait().unwrap().is_none(), "still running");

    signal(&child, "-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    b.shutdown().await;
}
