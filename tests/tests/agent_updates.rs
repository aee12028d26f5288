//! An agent against a scripted controller: a good table is applied, a broken one is NACKed
//! while the good one stays in force, an older version is refused, a repeat is acknowledged;
//! a reload moves it to other controllers.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh::{agent_config, eventually, http_get};
use proto::v1 as pb;
use proto::v1::route_distribution_server::{RouteDistribution, RouteDistributionServer};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

fn path(sites: &[&str]) -> pb::RoutePath {
    pb::RoutePath {
        sites: sites.iter().map(|s| s.to_string()).collect(),
        cost_ms: 12.0,
        mos: 4.3,
        r_factor: 90.0,
    }
}

fn update(version: u64, primary: &[&str]) -> pb::RouteUpdate {
    pb::RouteUpdate {
        version: Some(pb::TableVersion { epoch: 1, version }),
        nonce: format!("n{version}"),
        site: "a".into(),
        computed_unix_ms: 1,
        rows: vec![pb::RouteRow {
            dst: "b".into(),
            primary: Some(path(primary)),
            ..Default::default()
        }],
        known_sites: vec!["a".into(), "b".into(), "c".into()],
        max_relays: 2,
        ..Default::default()
    }
}

/// Sends a script of updates, one after each answer, and records the answers. With a `gate`,
/// the first `before_gate` updates go at once and the rest once the gate is opened.
#[derive(Clone)]
struct Scripted {
    script: Vec<pb::RouteUpdate>,
    answers: Arc<Mutex<Vec<pb::agent_message::Body>>>,
    gate: Option<(usize, Arc<tokio::sync::Notify>)>,
    /// Watch streams opened (hellos received).
    hellos: Arc<std::sync::atomic::AtomicUsize>,
}

#[tonic::async_trait]
impl RouteDistribution for Scripted {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::RouteUpdate, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let me = self.clone();
        tokio::spawn(async move {
            // The hello.
            let _ = inbound.next().await;
            me.hellos.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for (i, u) in me.script.into_iter().enumerate() {
                if let Some((before_gate, gate)) = &me.gate
                    && i == *before_gate
                {
                    gate.notified().await;
                }
                if tx.send(Ok(u)).await.is_err() {
                    return;
                }
                match inbound.next().await {
                    Some(Ok(pb::AgentMessage { body: Some(b) })) => me.answers.lock().unwrap().push(b),
                    _ => return,
                }
            }
            // Keep the stream open.
            let _ = inbound.next().await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Serves the scripted controller on a free loopback port.
async fn serve(
    svc: Scripted,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RouteDistributionServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_stale_updates_are_nacked_and_the_good_table_stays() {
    let script = vec![
        update(5, &["a", "c", "b"]),
        update(6, &["a", "c", "a", "b"]), // a loop
        update(7, &["a", "x", "b"]),      // an unknown site
        update(4, &["a", "b"]),           // older
        update(5, &["a", "c", "b"]),      // the same again (a resync)
    ];
    let svc = Scripted {
        script,
        answers: Arc::default(),
        gate: None,
        hellos: Arc::default(),
    };
    let (addr, server) = serve(svc.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent::start(agent_config(dir.path(), "a", vec![format!("http://{addr}")]))
        .await
        .unwrap();

    let answers = eventually(Duration::from_secs(20), "five answers", || async {
        let v = svc.answers.lock().unwrap().clone();
        (v.len() == 5).then_some(v)
    })
    .await;
    let kinds: Vec<String> = answers
        .iter()
        .map(|b| match b {
            pb::agent_message::Body::Ack(a) => format!("ack {}", a.version.as_ref().unwrap().version),
            pb::agent_message::Body::Nack(n) => {
                format!("nack {}: {}", n.version.as_ref().unwrap().version, n.error)
            }
            _ => "other".into(),
        })
        .collect();
    assert_eq!(kinds[0], "ack 5");
    assert!(
        kinds[1].starts_with("nack 6") && kinds[1].contains("twice"),
        "{kinds:?}"
    );
    assert!(
        kinds[2].starts_with("nack 7") && kinds[2].contains("unknown site x"),
        "{kinds:?}"
    );
    assert!(
        kinds[3].starts_with("nack 4") && kinds[3].contains("stale"),
        "{kinds:?}"
    );
    assert_eq!(kinds[4], "ack 5");

    let (status, v) = http_get(a.http_addr, "/v1/routes/b").await;
    assert_eq!(status, 200);
    assert_eq!(v["version"], 5);
    assert_eq!(v["route"]["primary"]["sites"], serde_json::json!(["a", "c", "b"]));
    assert_eq!(v["source"], "controller");
    let (status, _) = http_get(a.http_addr, "/v1/routes/zz").await;
    assert_eq!(status, 404);
    a.shutdown().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fails_over_to_the_next_controller() {
    let svc = Scripted {
        script: vec![update(3, &["a", "b"])],
        answers: Arc::default(),
        gate: None,
        hellos: Arc::default(),
    };
    let (addr, server) = serve(svc.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    // The first endpoint answers nothing (the discard port); the second is the controller.
    let cfg = agent_config(
        dir.path(),
        "a",
        vec!["http://127.0.0.1:9".into(), format!("http://{addr}")],
    );
    let a = agent::start(cfg).await.unwrap();
    let v = eventually(
        Duration::from_secs(20),
        "the table from the second controller",
        || async {
            let (status, v) = http_get(a.http_addr, "/v1/routes").await;
            (status == 200).then_some(v)
        },
    )
    .await;
    assert_eq!(v["version"], 3);
    assert_eq!(v["controller_connected"], true);
    a.shutdown().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_agent_to_new_controllers_and_refuses_what_needs_a_restart() {
    let script = |u: pb::RouteUpdate| Scripted {
        script: vec![u],
        answers: Arc::default(),
        gate: None,
        hellos: Arc::default(),
    };
    let (old, new) = (
        script(update(3, &["a", "b"])),
        script(update(4, &["a", "c", "b"])),
    );
    let (old_addr, old_server) = serve(old.clone()).await;
    let (new_addr, new_server) = serve(new.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent::start(agent_config(dir.path(), "a", vec![format!("http://{old_addr}")]))
        .await
        .unwrap();
    let version = || async {
        let (status, v) = http_get(a.http_addr, "/v1/routes").await;
        (status == 200).then(|| v["version"].as_u64()).flatten()
    };
    eventually(Duration::from_secs(20), "the old controller's table", || async {
        (version().await? == 3).then_some(())
    })
    .await;

    // The controllers moved: the stream to the old one is closed, the new one followed.
    let mut cfg = a.config();
    cfg.controllers = vec![format!("http://{new_addr}")];
    let changed = a.reload(cfg.clone()).unwrap();
    assert_eq!(changed, ["controllers"]);
    eventually(Duration::from_secs(20), "the new controller's table", || async {
        (version().await? == 4).then_some(())
    })
    .await;
    assert_eq!(new.hellos.load(std::sync::atomic::Ordering::Relaxed), 1);

    // A limit changed: applied, and the stream to a controller still listed is kept.
    cfg.max_route_waiters = 7;
    assert_eq!(a.reload(cfg.clone()).unwrap(), ["max_route_waiters"]);
    assert_eq!(a.state.max_waiters.load(std::sync::atomic::Ordering::Relaxed), 7);
    // What needs a restart is refused whole, naming it; nothing changes.
    let mut moved = cfg.clone();
    (moved.site, moved.max_route_waiters) = ("b".into(), 9);
    let e = a.reload(moved).unwrap_err().to_string();
    assert!(e.contains("site") && e.contains("restart"), "{e}");
    assert_eq!(a.state.max_waiters.load(std::sync::atomic::Ordering::Relaxed), 7);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        new.hellos.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "a reload that kept the controller reconnected"
    );
    let page = metrics(a.http_addr).await;
    for (result, n) in [("applied", 2), ("refused", 1)] {
        let series = format!("axon_agent_config_reloads_total{{result=\"{result}\"}} {n}");
        assert!(page.contains(&series), "{series} not in\n{page}");
    }
    assert_eq!(version().await, Some(4));
    a.shutdown().await;
    old_server.abort();
    new_server.abort();
}

/// Until one route read waits at the agent.
async fn until_waiting(http: std::net::SocketAddr) {
    eventually(Duration::from_secs(20), "a route read to be waiting", || async {
        metrics(http)
            .await
            .lines()
            .any(|l| l == "axon_agent_route_waiters 1")
            .then_some(())
    })
    .await;
}

async fn metrics(http: std::net::SocketAddr) -> String {
    http_get(http, "/metrics")
        .await
        .1
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_server_waits_for_the_next_table_with_one_request() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let svc = Scripted {
        script: vec![update(5, &["a", "c", "b"]), update(6, &["a", "b"])],
        answers: Arc::default(),
        gate: Some((1, gate.clone())),
        hellos: Arc::default(),
    };
    let (addr, server) = serve(svc.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent::AgentConfig {
        max_route_waiters: 1,
        ..agent_config(dir.path(), "a", vec![format!("http://{addr}")])
    };
    let a = agent::start(cfg).await.unwrap();
    let http = a.http_addr;
    eventually(Duration::from_secs(20), "table 1.5 applied", || async {
        (http_get(http, "/v1/routes").await.1["version"] == 5).then_some(())
    })
    .await;

    // Holding 1.5, a read that waits is answered when 1.6 is applied, with it.
    let waiting = tokio::spawn(async move { http_get(http, "/v1/routes?after=1.5&wait_s=120").await });
    until_waiting(http).await;
    // One read may wait here (`max_route_waiters = 1`): a second is refused, not held; a read
    // that does not wait is answered, unchanged.
    let (status, v) = http_get(http, "/v1/routes/b?after=1.5&wait_s=1").await;
    assert_eq!(status, 429, "{v}");
    assert!(v["error"].as_str().unwrap().contains("waiting already"), "{v}");
    let (status, v) = http_get(http, "/v1/routes/b?after=1.5").await;
    assert_eq!(status, 200);
    assert_eq!(
        (v["version"].as_u64(), v["changed"].as_bool()),
        (Some(5), Some(false))
    );
    assert!(!waiting.is_finished(), "answered before a new table");
    gate.notify_one();
    let (status, v) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiting read answered once 1.6 was applied")
        .unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (v["version"].as_u64(), v["changed"].as_bool()),
        (Some(6), Some(true))
    );
    assert_eq!(v["rows"][0]["primary"]["sites"], serde_json::json!(["a", "b"]));
    // A read that waits a second with no newer table: the same table, unchanged.
    let (status, v) = http_get(http, "/v1/routes/b?after=1.6&wait_s=1").await;
    assert_eq!(status, 200);
    assert_eq!(
        (v["version"].as_u64(), v["changed"].as_bool()),
        (Some(6), Some(false))
    );
    // A reader behind is answered at once; one naming no table too.
    let (_, v) = http_get(http, "/v1/routes/b?after=1.5&wait_s=120").await;
    assert_eq!(
        (v["version"].as_u64(), v["changed"].as_bool()),
        (Some(6), Some(true))
    );
    let (_, v) = http_get(http, "/v1/routes?wait_s=120").await;
    assert_eq!(v["version"], 6);

    // A query it cannot read is refused with what it expects, and counted.
    for (q, says) in [
        ("after=6", "EPOCH.VERSION"),
        ("wait_s=301", "0 to 300"),
        ("since=1", "unknown parameter"),
    ] {
        let (status, v) = http_get(http, &format!("/v1/routes?{q}")).await;
        assert_eq!(status, 400, "{q}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{q}: {v}");
    }
    let m = metrics(http).await;
    assert!(
        m.lines()
            .any(|l| l == "axon_agent_api_rejected_total{reason=\"bad_query\"} 3"),
        "{m}"
    );
    assert!(m.lines().any(|l| l == "axon_agent_route_waiters 0"), "{m}");
    assert!(
        m.lines()
            .any(|l| l == "axon_agent_api_rejected_total{reason=\"too_many_waiters\"} 1"),
        "{m}"
    );

    // A read waiting when the agent stops is answered, not dropped.
    let waiting = tokio::spawn(async move { http_get(http, "/v1/routes?after=1.6&wait_s=300").await });
    until_waiting(http).await;
    a.shutdown().await;
    let (status, v) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the waiting read answered at shutdown")
        .unwrap();
    assert_eq!((status, v["changed"].as_bool()), (200, Some(false)), "{v}");
    server.abort();
}
