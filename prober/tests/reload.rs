//! A running prober's peers change on reload (SIGHUP) without touching the links it keeps:
//! a peer added is measured at once, whichever side dials; a peer removed is answered on
//! the pair's connection, so a site that still measures it sees no outage; anything else
//! is refused whole. Certificates rotated in place serve the next handshakes. Real QUIC on
//! loopback.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{certs, config, eventually, http_get, metric};
use prober::{LivenessEvent, Output, PeerConfig, ProberHandle};

/// Every output of a prober from now on, collected in the background.
fn collect(p: &ProberHandle) -> Arc<Mutex<Vec<Output>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut rx = p.subscribe();
    let out = seen.clone();
    tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(o) => out.lock().unwrap().push(o),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    });
    seen
}

/// Full, connected windows for `peer` collected since index `from`.
fn good_windows(seen: &Mutex<Vec<Output>>, peer: &str, from: usize) -> usize {
    seen.lock().unwrap()[from..]
        .iter()
        .filter(|o| {
            matches!(o, Output::Window(w) if w.peer.as_str() == peer && w.connected && w.report.received >= 8)
        })
        .count()
}

/// Windows for `peer` collected since index `from`, whatever their state.
fn windows(seen: &Mutex<Vec<Output>>, peer: &str, from: usize) -> usize {
    seen.lock().unwrap()[from..]
        .iter()
        .filter(|o| matches!(o, Output::Window(w) if w.peer.as_str() == peer))
        .count()
}

/// `LinkDown`s for `peer` collected so far.
fn downs(seen: &Mutex<Vec<Output>>, peer: &str) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(
            |o| matches!(o, Output::Liveness(l) if l.peer.as_str() == peer && l.event == LivenessEvent::Down),
        )
        .count()
}

/// The mesh's old CA, which signed a and b; a new CA, which signed c and a's next
/// certificate; and a's own TLS files, at first the old mesh's.
struct Rotation {
    old: tempfile::TempDir,
    new: tempfile::TempDir,
    files: prober::TlsFiles,
    _own: tempfile::TempDir,
}

impl Rotation {
    fn new() -> Rotation {
        let own = tempfile::tempdir().unwrap();
        let r = Rotation {
            old: certs(&["a", "b"]),
            new: certs(&["a", "c"]),
            files: prober::tls::mesh_files(own.path(), "a"),
            _own: own,
        };
        r.install(r.old.path(), ca_pem(&r.old));
        r
    }

    /// Replaces a's files in place: `from`'s certificate for a, trusting `ca`.
    fn install(&self, from: &std::path::Path, ca: Vec<u8>) {
        let src = prober::tls::mesh_files(from, "a");
        std::fs::write(&self.files.ca, ca).unwrap();
        std::fs::copy(&src.cert, &self.files.cert).unwrap();
        std::fs::copy(&src.key, &self.files.key).unwrap();
    }

    /// The rotation: both CAs trusted, a's certificate from the new one.
    fn rotate(&self) {
        let mut both = ca_pem(&self.old);
        both.extend(ca_pem(&self.new));
        self.install(self.new.path(), both);
    }
}

fn ca_pem(d: &tempfile::TempDir) -> Vec<u8> {
    std::fs::read(d.path().join("ca.pem")).unwrap()
}

fn with_peers(p: &ProberHandle, peers: &[(&str, std::net::SocketAddr)]) -> prober::ProberConfig {
    let mut cfg = p.config().clone();
    cfg.peers = peers
        .iter()
        .map(|(s, a)| PeerConfig {
            site: (*s).into(),
            addr: *a,
        })
        .collect();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_added_and_removed_on_reload_leave_the_other_links_untouched() {
    let long = Duration::from_secs(30);
    let dir = certs(&["a", "b", "c"]);
    // a measures b; b measures c; c measures a and b. So a answers c, and b answers a.
    let mut a = prober::start(config(dir.path(), "a", &[])).await.unwrap();
    let mut b = prober::start(config(dir.path(), "b", &[])).await.unwrap();
    let c = prober::start(config(
        dir.path(),
        "c",
        &[("a", a.local_addr), ("b", b.local_addr)],
    ))
    .await
    .unwrap();
    let (sa, sb, sc) = (collect(&a), collect(&b), collect(&c));
    let (addr_a, addr_b, addr_c) = (a.local_addr, b.local_addr, c.local_addr);
    a.reload(with_peers(&a, &[("b", addr_b)])).unwrap();
    b.reload(with_peers(&b, &[("c", addr_c)])).unwrap();
    for (seen, peer, who) in [(&sa, "b", "a"), (&sb, "c", "b"), (&sc, "a", "c"), (&sc, "b", "c")] {
        eventually(long, &format!("{who} measuring {peer}"), || {
            good_windows(seen, peer, 0) >= 2
        })
        .await;
    }
    assert_eq!(b.open_connections(), 2, "b holds a's connection and its own to c");

    // b adds a. a sorts first and already dialled b: b's answering task hands that very
    // connection to b's new task, and no new one is opened.
    let mark_b = sb.lock().unwrap().len();
    let r = b.reload(with_peers(&b, &[("c", addr_c), ("a", addr_a)])).unwrap();
    assert_eq!(
        (r.added, r.removed),
        (vec!["a".to_string()], Vec::<String>::new())
    );
    eventually(long, "b measuring a", || good_windows(&sb, "a", mark_b) >= 2).await;
    assert_eq!(
        b.open_connections(),
        2,
        "b took a's connection over instead of dialling"
    );

    // a adds c. a sorts first and dials c; c keeps a's connection and closes its own as
    // superseded, which is no outage.
    let mark_a = sa.lock().unwrap().len();
    a.reload(with_peers(&a, &[("b", addr_b), ("c", addr_c)])).unwrap();
    eventually(long, "a measuring c", || good_windows(&sa, "c", mark_a) >= 2).await;

    // a removes b. It stops measuring b but answers on the pair's connection: b, which still
    // measures a, keeps full windows.
    let r = a.reload(with_peers(&a, &[("c", addr_c)])).unwrap();
    assert_eq!(r.removed, ["b"]);
    let mark_a = sa.lock().unwrap().len();
    let mark_b = sb.lock().unwrap().len();
    eventually(long, "b still measuring a", || {
        good_windows(&sb, "a", mark_b) >= 3
    })
    .await;
    assert!(
        windows(&sa, "b", mark_a) <= 1,
        "a still measures b after removing it"
    );
    let page = http_get(a.metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(
        metric(&page, "axon_peer_up{peer=\"b\"}"),
        None,
        "a stale gauge for b"
    );
    assert_eq!(metric(&page, "axon_peer_up{peer=\"c\"}"), Some(1.0));
    assert_eq!(metric(&page, "axon_prober_peers"), Some(1.0));
    assert_eq!(
        metric(&page, "axon_prober_config_reloads_total{result=\"applied\"}"),
        Some(3.0)
    );

    // None of it took a link down, on either side of any pair.
    for (seen, who) in [(&sa, "a"), (&sb, "b"), (&sc, "c")] {
        for peer in ["a", "b", "c"] {
            assert_eq!(downs(seen, peer), 0, "{who} saw {peer} go down");
        }
    }

    // A file changing anything but the peers is refused whole, with the keys named.
    let mut bad = with_peers(&a, &[("b", addr_b), ("c", addr_c)]);
    bad.probe_interval_ms = 50;
    bad.window_ms = 2_000;
    let e = a.reload(bad).unwrap_err().to_string();
    assert!(
        e.contains("probe_interval_ms") && e.contains("window_ms") && e.contains("restart"),
        "{e}"
    );
    assert_eq!(a.config().peers.len(), 1, "nothing applied");
    let mut bad = a.config().clone();
    bad.peers.push(PeerConfig {
        site: "not a site!".into(),
        addr: addr_b,
    });
    assert!(a.reload(bad).is_err(), "an invalid peer is refused");
    let page = http_get(a.metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(
        metric(&page, "axon_prober_config_reloads_total{result=\"refused\"}"),
        Some(2.0)
    );

    for p in [a, b, c] {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_in_place_serve_new_handshakes_and_the_links_up_stay_up() {
    let long = Duration::from_secs(30);
    let r = Rotation::new();
    let (old, new, files) = (&r.old, &r.new, &r.files);
    let b = prober::start(config(old.path(), "b", &[])).await.unwrap();
    let c = prober::start(config(new.path(), "c", &[])).await.unwrap();
    let mut cfg = config(old.path(), "a", &[("b", b.local_addr)]);
    cfg.tls = files.clone();
    let mut a = prober::start(cfg).await.unwrap();
    let (sa, sb) = (collect(&a), collect(&b));
    eventually(long, "a measuring b", || good_windows(&sa, "b", 0) >= 2).await;

    // c added before the rotation: no handshake succeeds (neither trusts the other's CA).
    a.reload(with_peers(&a, &[("b", b.local_addr), ("c", c.local_addr)]))
        .unwrap();
    let failures = || a.metrics.dial_failures.with_label_values(&["c"]).get();
    eventually(long, "a failing to reach c", || failures() >= 2).await;
    assert_eq!(windows(&sa, "c", 0), 0);

    // Unreadable files are refused, and the ones in force stay.
    std::fs::write(&files.key, "not a key").unwrap();
    let e = a.reload(a.config().clone()).unwrap_err().to_string();
    assert!(e.contains("key"), "{e}");

    // Rotated in place: both CAs trusted, a's certificate from the new one. The next
    // handshake with c succeeds; the link to b, set up under the old certificate, stays up.
    r.rotate();
    let mark = sa.lock().unwrap().len();
    a.reload(a.config().clone()).unwrap();
    eventually(long, "a measuring c", || good_windows(&sa, "c", mark) >= 2).await;
    assert!(good_windows(&sa, "b", mark) >= 2, "the link to b went on");
    for (seen, who) in [(&sa, "a"), (&sb, "b")] {
        for peer in ["a", "b"] {
            assert_eq!(downs(seen, peer), 0, "{who} saw {peer} go down");
        }
    }
    for p in [a, b, c] {
        p.shutdown().await;
    }
}

/// The same rotation with no reload at all: the periodic check (`tls.recheck_s`) finds the
/// replaced files, loads them once they settle, and exports the new certificate's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_replaced_in_place_are_loaded_without_a_signal() {
    let long = Duration::from_secs(30);
    let mut r = Rotation::new();
    r.files.recheck_s = 1;
    // a's next certificate ends sooner than its first: the gauge must move.
    prober::tls::issue(r.new.path(), "a", &["a", "prober.axon"], 30).unwrap();
    let (old, new, files) = (&r.old, &r.new, &r.files);
    let b = prober::start(config(old.path(), "b", &[])).await.unwrap();
    let c = prober::start(config(new.path(), "c", &[])).await.unwrap();
    let mut cfg = config(old.path(), "a", &[("b", b.local_addr), ("c", c.local_addr)]);
    cfg.tls = files.clone();
    let a = prober::start(cfg).await.unwrap();
    let first = proto::auth::earliest_expiry(&files.cert).unwrap();
    assert_eq!(a.metrics.tls.expiry("cert"), Some(first));
    let (sa, sb) = (collect(&a), collect(&b));
    eventually(long, "a measuring b", || good_windows(&sa, "b", 0) >= 2).await;
    let failures = || a.metrics.dial_failures.with_label_values(&["c"]).get();
    eventually(long, "a failing to reach c", || failures() >= 2).await;
    assert_eq!(windows(&sa, "c", 0), 0);

    r.rotate();
    let mark = sa.lock().unwrap().len();
    eventually(long, "a measuring c", || good_windows(&sa, "c", mark) >= 2).await;
    assert!(good_windows(&sa, "b", mark) >= 2, "the link to b went on");
    for (seen, who) in [(&sa, "a"), (&sb, "b")] {
        for peer in ["a", "b"] {
            assert_eq!(downs(seen, peer), 0, "{who} saw {peer} go down");
        }
    }
    let rotated = proto::auth::earliest_expiry(&files.cert).unwrap();
    assert_ne!(rotated, first);
    assert_eq!(a.metrics.tls.expiry("cert"), Some(rotated));
    let m = http_get(a.metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(
        metric(&m, "axon_tls_file_changes_total{result=\"loaded\"}"),
        Some(1.0),
        "{m}"
    );
    for p in [a, b, c] {
        p.shutdown().await;
    }
}
