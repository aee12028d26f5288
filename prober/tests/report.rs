//! The report stream against a real gRPC server: windows and liveness events arrive, nothing is
//! lost while the controller is away, and sequence numbers stay contiguous across reconnects.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{certs, config, eventually};
use proto::v1::probe_ingest_server::{ProbeIngest, ProbeIngestServer};
use proto::v1::{ProberMessage, ReportAck, probe_report, prober_message};
use tokio::sync::oneshot;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

#[derive(Default)]
struct Seen {
    hellos: Vec<(String, u64)>,
    seqs: BTreeSet<u64>,
    windows: usize,
}

/// A minimal controller ingest: records what arrives and acks it; ends every stream when told
/// to stop (as a controller shutting down does).
#[derive(Clone)]
struct Ingest(Arc<Mutex<Seen>>, tokio::sync::watch::Receiver<bool>);

impl Ingest {
    fn new() -> (Self, tokio::sync::watch::Sender<bool>) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (Ingest(Arc::default(), rx), tx)
    }
}

#[tonic::async_trait]
impl ProbeIngest for Ingest {
    type ReportStream = Pin<Box<dyn Stream<Item = Result<ReportAck, Status>> + Send>>;

    async fn report(
        &self,
        req: Request<Streaming<ProberMessage>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let mut inbound = req.into_inner();
        let seen = self.0.clone();
        let mut closing = self.1.clone();
        let out = async_stream(move |tx| async move {
            loop {
                let m = tokio::select! {
                    m = inbound.next() => match m {
                        Some(Ok(m)) => m,
                        _ => break,
                    },
                    _ = closing.changed() => {
                        let _ = tx.send(Err(Status::unavailable("shutting down"))).await;
                        break;
                    }
                };
                let ack = {
                    let mut s = seen.lock().unwrap();
                    match m.body {
                        Some(prober_message::Body::Hello(h)) => {
                            s.hellos.push((h.site, h.instance));
                            None
                        }
                        Some(prober_message::Body::Report(r)) => {
                            s.seqs.insert(r.seq);
                            if matches!(r.body, Some(probe_report::Body::Window(_))) {
                                s.windows += 1;
                            }
                            Some(r.seq)
                        }
                        None => None,
                    }
                };
                if let Some(seq) = ack
                    && tx
                        .send(Ok(ReportAck {
                            acked_through: seq,
                            ..Default::default()
                        }))
                        .await
                        .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(out))
    }
}

type AckTx = tokio::sync::mpsc::Sender<Result<ReportAck, Status>>;

fn async_stream<F, Fut>(f: F) -> Pin<Box<dyn Stream<Item = Result<ReportAck, Status>> + Send>>
where
    F: FnOnce(AckTx) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

async fn serve(addr: SocketAddr, ingest: Ingest, closing: tokio::sync::watch::Sender<bool>) -> impl FnOnce() {
    // Re-binding the same port right after a shutdown may race its release: retry briefly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    };
    let (stop_tx, stopped) = oneshot::channel::<()>();
    let stop = move || {
        let _ = closing.send(true);
        let _ = stop_tx.send(());
    };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ProbeIngestServer::new(ingest))
            .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    stop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_wait_while_the_controller_is_away_and_arrive_without_gaps() {
    let dir = certs(&["a", "b"]);
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (first, closing) = Ingest::new();
    let stop = serve(addr, first.clone(), closing).await;

    let b = prober::start(config(dir.path(), "b", &[])).await.unwrap();
    let mut cfg = config(dir.path(), "a", &[("b", b.local_addr)]);
    cfg.window_ms = 200;
    cfg.report.endpoints = vec![format!("http://{addr}")];
    cfg.report.backoff_min_ms = 50;
    cfg.report.backoff_max_ms = 200;
    let a = prober::start(cfg).await.unwrap();

    eventually(
        Duration::from_secs(20),
        "five windows at the first controller",
        || first.0.lock().unwrap().windows >= 5,
    )
    .await;
    stop();
    // While it is away, reports pile up in the prober's buffer.
    eventually(Duration::from_secs(20), "a backlog in the buffer", || {
        a.metrics.controller_connected.get() == 0.0 && a.metrics.report_buffered.get() >= 10
    })
    .await;
    // Still ready (a prober taken out of a load balancer for its controller's absence would
    // cut its site off from the mesh), and saying what it waits for.
    let ready = common::http_get(a.metrics_addr.unwrap(), "/readyz").await;
    assert!(
        ready.ends_with("report stream waiting for a controller\n"),
        "{ready}"
    );
    let (second, closing) = Ingest::new();
    let _stop2 = serve(addr, second.clone(), closing).await;
    eventually(
        Duration::from_secs(20),
        "the backlog at the second controller",
        || second.0.lock().unwrap().windows >= 15 && a.metrics.report_buffered.get() < 5,
    )
    .await;
    let ready = common::http_get(a.metrics_addr.unwrap(), "/readyz").await;
    assert!(ready.ends_with("report stream open\n"), "{ready}");

    {
        let s1 = first.0.lock().unwrap();
        let s2 = second.0.lock().unwrap();
        assert_eq!(s1.hellos.len(), 1);
        assert_eq!(s1.hellos[0].0, "a");
        assert_eq!(
            s2.hellos[0], s1.hellos[0],
            "same instance: sequence numbers continue"
        );
        let all: BTreeSet<u64> = s1.seqs.union(&s2.seqs).copied().collect();
        let max = *all.last().unwrap();
        assert_eq!(all.len() as u64, max, "gaps in 1..={max}: {all:?}");
        assert_eq!(a.metrics.report_dropped.get(), 0);
    }
    a.shutdown().await;
    b.shutdown().await;
}
