//! Hostile and broken peers: garbage datagrams, forged and replayed echoes, impostors and
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
use prober::wire::{ANSWER, ASK};
use prober::{Datagram, Echo, Output, site_tag};

fn client_endpoint(tls: &TlsMaterial) -> quinn::Endpoint {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.client.clone()).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    ep
}

fn dropped(m: &prober::metrics::Metrics, reason: &str) -> u64 {
    m.dropped.with_label_values(&[reason]).get()
}

fn bytes(site: &str, seq: u32, flags: u8, echoes: &[Echo]) -> Bytes {
    let mut v = Vec::new();
    Datagram {
        flags,
        seq,
        sent_us: 5,
        site: site_tag(site),
        echoes: echoes.to_vec(),
    }
    .encode(&mut v);
    Bytes::from(v)
}

async fn next(conn: &quinn::Connection) -> Datagram {
    let d = tokio::time::timeout(Duration::from_secs(5), conn.read_datagram())
        .await
        .unwrap()
        .unwrap();
    Datagram::decode(&d).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prober_drops_and_counts_every_bad_datagram_and_keeps_answering() {
    let dir = certs(&["b", "x"]);
    let b = prober::start(config(dir.path(), "b", &[])).await.unwrap();
    let tls = TlsMaterial::load(&mesh_files(dir.path(), "x")).unwrap();
    let ep = client_endpoint(&tls);
    let conn = ep.connect(b.local_addr, "b").unwrap().await.unwrap();

    // A good ask first, so the connection is identified; it is answered with its echo.
    conn.send_datagram(bytes("x", 0, ASK, &[])).unwrap();
    let answer = next(&conn).await;
    assert_eq!(answer.site, site_tag("b"));
    assert_eq!(answer.flags, ANSWER);
    assert_eq!(answer.echoes.len(), 1);
    assert_eq!(answer.echoes[0].seq, 0);

    let good = bytes("x", 1, ASK, &[]);
    let mut oversized = good.to_vec();
    oversized.resize(400, 0);
    let mut bad_version = good.to_vec();
    bad_version[0] = 0xA9;
    let mut bad_flags = good.to_vec();
    bad_flags[1] = 0x40;
    let mut trailing = good.to_vec();
    trailing.extend_from_slice(&[0, 0, 0]);
    let bad: Vec<(Bytes, &str)> = vec![
        (good.slice(..10), "truncated"),
        (Bytes::from(oversized), "oversized"),
        (Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"), "foreign"),
        (Bytes::from(bad_version), "version"),
        (Bytes::from(bad_flags), "flags"),
        (Bytes::from(trailing), "trailing"),
        // An impostor: x's certificate, a datagram claiming to come from site "b".
        (bytes("b", 2, 0, &[]), "identity"),
        // x's first datagram again.
        (bytes("x", 0, 0, &[]), "replayed"),
        // Echoes of b's answer: never sent, and held for longer than it has existed.
        (
            bytes(
                "x",
                3,
                0,
                &[Echo {
                    seq: 1_000,
                    hold_us: 0,
                }],
            ),
            "unsent",
        ),
        (
            bytes(
                "x",
                4,
                0,
                &[Echo {
                    seq: answer.seq,
                    hold_us: 10_000_000,
                }],
            ),
            "forged",
        ),
    ];
    for (bytes, _) in &bad {
        conn.send_datagram(bytes.clone()).unwrap();
    }
    eventually(Duration::from_secs(10), "every bad datagram counted", || {
        bad.iter().all(|(_, reason)| dropped(&b.metrics, reason) >= 1)
    })
    .await;
    // And it still answers.
    conn.send_datagram(bytes("x", 5, ASK, &[])).unwrap();
    let answer = next(&conn).await;
    assert!(answer.echoes.iter().any(|e| e.seq == 5), "{answer:?}");
    assert_eq!(b.metrics.answered.get(), 2);
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_claiming_a_site_its_certificate_does_not_name_is_never_answered() {
    let dir = certs(&["b", "x"]);
    let b = prober::start(config(dir.path(), "b", &[])).await.unwrap();
    let tls = TlsMaterial::load(&mesh_files(dir.path(), "x")).unwrap();
    let ep = client_endpoint(&tls);
    let conn = ep.connect(b.local_addr, "b").unwrap().await.unwrap();
    for seq in 0..3 {
        conn.send_datagram(bytes("y", seq, ASK, &[])).unwrap();
    }
    eventually(
        Duration::from_secs(10),
        "the impostor's datagrams counted",
        || dropped(&b.metrics, "identity") >= 3,
    )
    .await;
    let r = tokio::time::timeout(Duration::from_millis(500), conn.read_datagram()).await;
    assert!(r.is_err(), "an impostor was answered: {r:?}");
    assert_eq!(b.metrics.answered.get(), 0);
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

/// A peer that echoes every ask twice, and adds a forged echo of each kind, a replay, an
/// impostor's datagram and garbage.
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
            let mut seq = 0u32;
            while let Ok(d) = conn.read_datagram().await {
                let Ok(d) = Datagram::decode(&d) else { continue };
                let echo = Echo {
                    seq: d.seq,
                    hold_us: 0,
                };
                let mut send = |site: &str, echoes: &[Echo]| {
                    let _ = conn.send_datagram(bytes(site, seq, ANSWER, echoes));
                    seq += 1;
                };
                send("x", &[echo]);
                send("x", &[echo]); // echoed twice
                send(
                    "x",
                    &[Echo {
                        seq: d.seq + 1_000,
                        hold_us: 0,
                    }],
                ); // never sent
                send(
                    "x",
                    &[Echo {
                        seq: d.seq,
                        hold_us: 5_000_000,
                    }],
                ); // held longer than it lived
                send("zz", &[echo]); // not the certificate's site
                let _ = conn.send_datagram(bytes("x", seq - 2, ANSWER, &[])); // replayed
                let _ = conn.send_datagram(Bytes::from_static(b"\x00\x01garbage"));
            }
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_echoes_are_dropped_and_counted_while_rtt_stays_honest() {
    let dir = certs(&["a", "x"]);
    let (addr, liar) = lying_peer(dir.path()).await;
    let a = prober::start(config(dir.path(), "a", &[("x", addr)]))
        .await
        .unwrap();
    let mut rx = a.subscribe();
    let w = wait_for(
        &mut rx,
        Duration::from_secs(20),
        "a window with echoes",
        |o| match o {
            Output::Window(w) if w.connected && w.report.received >= 5 => Some(w.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(
        w.report.duplicates, w.report.received,
        "every probe was echoed twice: {w:?}"
    );
    assert_eq!(w.report.lost, 0);
    assert!(w.report.rtt_ms[4] < 100.0, "{w:?}");
    for reason in ["unsent", "forged", "replayed", "identity", "foreign"] {
        assert!(
            dropped(&a.metrics, reason) >= 5,
            "{reason}: {}",
            dropped(&a.metrics, reason)
        );
    }
    a.shutdown().await;
    liar.abort();
}
