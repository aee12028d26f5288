//! Hostile and broken peers: garbage datagrams, forged and replayed replies, impostors and
//! clients without certificates. Everything is dropped and counted; nothing panics; real
//! probing goes on.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{certs, config, eventually, wait_for};
use prober::tls::{TlsMaterial, mesh_files};
use prober::{Kind, Output, Probe};
use topology::SiteId;

fn client_endpoint(tls: &TlsMaterial) -> quinn::Endpoint {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.client.clone()).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    ep
}

fn dropped(m: &prober::metrics::Metrics, reason: &str) -> u64 {
    m.dropped.with_label_values(&[reason]).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflector_drops_and_counts_every_bad_datagram_and_keeps_reflecting() {
    let dir = certs(&["b", "x"]);
    let b = prober::start(config(dir.path(), "b", &[])).await.unwrap();
    let tls = TlsMaterial::load(&mesh_files(dir.path(), "x")).unwrap();
    let ep = client_endpoint(&tls);
    let conn = ep.connect(b.local_addr, "b").unwrap().await.unwrap();

    let probe = |site: &str, kind: Kind| {
        let mut v = Vec::new();
        Probe {
            kind,
            session: 1,
            seq: 9,
            sent_ns: 5,
            site: SiteId::new(site).unwrap(),
        }
        .encode(&mut v);
        v
    };
    let good = probe("x", Kind::Probe);
    let mut oversized = good.clone();
    oversized.resize(400, 0);
    let mut bad_version = good.clone();
    bad_version[2] = 99;
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (good[..10].to_vec(), "truncated"),
        (oversized, "oversized"),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), "foreign"),
        (bad_version, "version"),
        (probe("x", Kind::Reply), "unexpected_reply"),
        // An impostor: x's certificate, a probe claiming to come from site "b".
        (probe("b", Kind::Probe), "identity"),
    ];
    // The good probe first, so the connection's identity is learnt from it.
    conn.send_datagram(Bytes::from(good.clone())).unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), conn.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Probe::decode(&reply).unwrap().kind, Kind::Reply);
    for (bytes, _) in &bad {
        conn.send_datagram(Bytes::from(bytes.clone())).unwrap();
    }
    eventually(Duration::from_secs(10), "every bad datagram counted", || {
        bad.iter().all(|(_, reason)| dropped(&b.metrics, reason) >= 1)
    })
    .await;
    // And it still reflects.
    conn.send_datagram(Bytes::from(good)).unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), conn.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(Probe::decode(&reply).unwrap().site.as_str(), "x");
    assert_eq!(b.metrics.reflected.get(), 2);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_mesh_certificate_is_refused() {
    let dir = certs(&["b"]);
    let other = certs(&["b"]); // another CA altogether
    let b = prober::start(config(dir.path(), "b", &[])).await.unwrap();
    let stranger = TlsMaterial::load(&mesh_files(other.path(), "b")).unwrap();
    let ep = client_endpoint(&stranger);
    let r = tokio::time::timeout(Duration::from_secs(10), ep.connect(b.local_addr, "b").unwrap())
        .await
        .unwrap();
    assert!(r.is_err(), "a certificate from another CA was accepted");
    b.shutdown().await;
}

/// A peer that answers every probe twice, plus a forged reply of each kind.
async fn lying_peer(dir: &std::path::Path) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let tls = TlsMaterial::load(&mesh_files(dir, "x")).unwrap();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.server.clone()).unwrap();
    let ep = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = ep.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Some(inc) = ep.accept().await {
            let Ok(conn) = inc.await else { continue };
            while let Ok(d) = conn.read_datagram().await {
                let Ok(p) = Probe::decode(&d) else { continue };
                let send = |p: Probe| {
                    let mut v = Vec::new();
                    p.encode(&mut v);
                    let _ = conn.send_datagram(Bytes::from(v));
                };
                send(p.reflect());
                send(p.reflect()); // replayed
                send(Probe {
                    seq: p.seq + 1_000,
                    ..p.reflect()
                }); // never sent
                send(Probe {
                    session: p.session ^ 1,
                    ..p.reflect()
                }); // another session
                send(Probe {
                    sent_ns: p.sent_ns ^ 1,
                    ..p.reflect()
                }); // forged timestamp
                send(Probe {
                    site: SiteId::new("zz").unwrap(),
                    ..p.reflect()
                }); // not our probe
                let _ = conn.send_datagram(Bytes::from_static(b"\x00\x01garbage"));
            }
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_replies_are_dropped_and_counted_while_rtt_stays_honest() {
    let dir = certs(&["a", "x"]);
    let (addr, liar) = lying_peer(dir.path()).await;
    let a = prober::start(config(dir.path(), "a", &[("x", addr)]))
        .await
        .unwrap();
    let mut rx = a.subscribe();
    let w = wait_for(
        &mut rx,
        Duration::from_secs(20),
        "a window with replies",
        |o| match o {
            Output::Window(w) if w.connected && w.report.received >= 5 => Some(w.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(
        w.report.duplicates, w.report.received,
        "every probe was answered twice: {w:?}"
    );
    assert_eq!(w.report.lost, 0);
    for reason in ["unsent", "stale_session", "mismatch", "site_mismatch", "foreign"] {
        assert!(
            dropped(&a.metrics, reason) >= 5,
            "{reason}: {}",
            dropped(&a.metrics, reason)
        );
    }
    a.shutdown().await;
    liar.abort();
}
