//! The report stream's answers: when a pair's windows reveal a rise in loss that later windows
//! have not yet confirmed (or are improbable short of a change), the controller's acks ask each
//! end's prober for an evidence burst to the other (`ReportAck.evidence_wanted`); the asks are
//! counted and shown to the operator. Real gRPC against a real controller, with the test
//! playing the two probers; then real probers over QUIC through the WAN emulator, bursting
//! because they were asked.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh::{Mesh, controller_config, endpoint, eventually, four_sites, http_get, relay_rtt};
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;
use proto::v1::probe_ingest_client::ProbeIngestClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const WAIT: Duration = Duration::from_secs(20);

/// One prober's report stream, as the test plays it.
struct Reporter {
    site: &'static str,
    tx: mpsc::Sender<pb::ProberMessage>,
    acks: tonic::Streaming<pb::ReportAck>,
    seq: u64,
}

impl Reporter {
    async fn open(url: &str, site: &'static str) -> Reporter {
        let (tx, rx) = mpsc::channel(4);
        let hello = pb::ProberHello {
            site: site.into(),
            instance: 1,
            software: "test".into(),
        };
        tx.send(pb::ProberMessage {
            body: Some(pb::prober_message::Body::Hello(hello)),
        })
        .await
        .unwrap();
        let acks = ProbeIngestClient::connect(url.to_string())
            .await
            .unwrap()
            .report(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Reporter {
            site,
            tx,
            acks,
            seq: 0,
        }
    }

    /// Reports one window to `to` ending at `end` (Unix ms); the controller's ack of it.
    async fn window(&mut self, to: &str, end: u64, sent: u32, received: u32) -> pb::ReportAck {
        self.seq += 1;
        let w = pb::LinkWindow {
            from: self.site.into(),
            to: to.into(),
            start_unix_ms: end - 1_000,
            end_unix_ms: end,
            sent,
            received,
            lost: sent - received,
            rtt_min_ms: 40.0,
            rtt_p50_ms: 40.0,
            rtt_p90_ms: 40.0,
            rtt_p99_ms: 40.0,
            rtt_max_ms: 40.0,
            connected: true,
            ..Default::default()
        };
        let report = pb::ProbeReport {
            seq: self.seq,
            body: Some(pb::probe_report::Body::Window(w)),
        };
        self.tx
            .send(pb::ProberMessage {
                body: Some(pb::prober_message::Body::Report(report)),
            })
            .await
            .unwrap();
        let ack = tokio::time::timeout(WAIT, self.acks.message())
            .await
            .expect("an ack in time")
            .unwrap()
            .expect("the stream is open");
        assert_eq!((ack.acked_through, ack.rejected), (self.seq, 0), "{ack:?}");
        ack
    }
}

/// Whether `Admin.Links` shows each direction of a↔b as wanting evidence (once the links
/// are listed: they are, from the first computation after their first window).
async fn links_want_evidence(url: &str) -> (bool, bool) {
    let admin = AdminClient::connect(url.to_string()).await.unwrap();
    eventually(WAIT, "a↔b is listed", || {
        let mut admin = admin.clone();
        async move {
            let links = admin.links(pb::LinksRequest {}).await.ok()?.into_inner().links;
            let wants = |from: &str, to: &str| {
                links
                    .iter()
                    .find(|l| l.from == from && l.to == to)
                    .map(|l| l.wants_evidence)
            };
            Some((wants("a", "b")?, wants("b", "a")?))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_ask_both_ends_for_evidence_until_a_rise_in_loss_is_confirmed() {
    let mut cfg = controller_config(&four_sites(), None);
    // Loss judged as in production: a minute of decayed counts.
    cfg.links = Default::default();
    let c = controller::daemon::start(cfg).await.unwrap();
    let url = endpoint(&c);
    let (mut a, mut b) = (Reporter::open(&url, "a").await, Reporter::open(&url, "b").await);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    // Five clean minutes of windows from both ends, ending now: nothing to ask about.
    let start = now - 310_000;
    for i in 0..300 {
        let t = start + i * 1_000;
        assert!(a.window("b", t, 10, 10).await.evidence_wanted.is_empty());
        assert!(b.window("a", t + 300, 10, 10).await.evidence_wanted.is_empty());
    }
    assert_eq!(links_want_evidence(&url).await, (false, false));
    // A second that loses six round trips in a hundred: each end is asked for evidence on the
    // other while the rise awaits confirmation.
    let t = start + 300_000;
    assert_eq!(a.window("b", t, 100, 94).await.evidence_wanted, ["b"]);
    assert_eq!(b.window("a", t + 300, 100, 94).await.evidence_wanted, ["a"]);
    // The operator sees it (`axonctl links`).
    assert_eq!(links_want_evidence(&url).await, (true, true));
    // A clean window of the plain rate confirms nothing: still asked.
    assert_eq!(a.window("b", t + 1_000, 10, 10).await.evidence_wanted, ["b"]);
    // A second losing as many confirms it: nobody is asked any more.
    assert!(a.window("b", t + 2_000, 100, 95).await.evidence_wanted.is_empty());
    assert!(b.window("a", t + 2_300, 100, 95).await.evidence_wanted.is_empty());
    assert_eq!(links_want_evidence(&url).await, (false, false));
    // Every ask is counted.
    let (_, metrics) = http_get(c.http_addr, "/metrics").await;
    let metrics = metrics.as_str().unwrap().to_string();
    let asked = metrics.lines().find_map(|l| {
        l.strip_prefix("axon_ingest_evidence_wanted_total ")?
            .parse::<f64>()
            .ok()
    });
    assert_eq!(asked, Some(3.0), "{metrics}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_probers_burst_on_a_lossy_link_when_the_controller_asks() {
    // Bursts only when asked: the miss gate turns every link away (`below_miss_rate` 0), so
    // no burst starts on a miss, and none for a heal.
    let mesh = Mesh::start_tuned(four_sites(), relay_rtt, |p| p.burst.below_miss_rate = 0.0).await;
    let asked = |site: &str, peer: &str| {
        mesh.probers[site]
            .metrics
            .asked_bursts
            .with_label_values(&[peer])
            .get()
    };
    let started = |site: &str, peer: &str| mesh.probers[site].metrics.bursts.with_label_values(&[peer]).get();
    // The mesh settles: every agent routes a→b.
    eventually(WAIT, "a routes to b", || async { mesh.primary("a", "b").await }).await;
    // a↔b loses 8% each way: both ends are asked for evidence on each other, and burst.
    mesh.set_loss("a", "b", 0.08);
    eventually(
        Duration::from_secs(60),
        "both ends of a↔b burst when asked",
        || async { (asked("a", "b") > 0 && asked("b", "a") > 0).then_some(()) },
    )
    .await;
    // Every burst of the pair was asked for, and no link that lost nothing was asked about.
    assert_eq!(started("a", "b"), asked("a", "b"));
    assert_eq!(started("b", "a"), asked("b", "a"));
    let lost = |site: &str, peer: &str| mesh.probers[site].metrics.lost.with_label_values(&[peer]).get();
    for x in ["a", "b", "c", "d"] {
        for y in ["a", "b", "c", "d"] {
            if x != y && lost(x, y) + lost(y, x) == 0 {
                assert_eq!(
                    asked(x, y),
                    0,
                    "{x} was asked for evidence on {y}, which lost nothing"
                );
            }
        }
    }
    mesh.shutdown().await;
}
