//! Node status reports: the media server tells its agent how loaded the node is
//! (`PUT /v1/status`), the agent forwards it on its watch stream, and the controller shows it
//! per node (`Admin.Status`), per site (`Admin.Sites`) and in its metrics. Bad reports are
//! refused with a reason and counted, at the agent and at the controller, and change nothing.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use mesh::{agent_config, controller_config, endpoint, eventually, four_sites, http_get, http_request};
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;
use proto::v1::route_distribution_client::RouteDistributionClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const WAIT: Duration = Duration::from_secs(20);

/// The value of one sample line of a Prometheus exposition (`name{labels} value`).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_flow_from_the_media_server_to_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let sites = four_sites();
    let c = controller::daemon::start(controller_config(&sites, None))
        .await
        .unwrap();
    let mut cfg = agent_config(dir.path(), "a", vec![endpoint(&c)]);
    cfg.status_min_interval_ms = 50;
    let agent = agent::daemon::start(cfg).await.unwrap();
    let api = agent.http_addr;
    let mut admin = AdminClient::connect(endpoint(&c)).await.unwrap();

    // Before any report: the node is connected and reports nothing.
    let (code, v) = http_get(api, "/v1/status").await;
    assert_eq!((code, v["sessions"].is_null()), (200, true), "{v}");
    let node = eventually(WAIT, "the agent connects", || {
        let mut admin = admin.clone();
        async move {
            let s = admin.status(pb::StatusRequest {}).await.ok()?.into_inner();
            s.agents.into_iter().find(|a| a.site == "a" && a.connected)
        }
    })
    .await;
    assert_eq!((node.sessions, node.load), (None, None));

    // A report reaches the controller, per node and per site.
    let (code, v) = http_request(api, "PUT", "/v1/status", r#"{"sessions": 42, "load": 0.35}"#).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["sessions"], 42);
    let node = eventually(WAIT, "the controller shows the node's load", || {
        let mut admin = admin.clone();
        async move {
            let s = admin.status(pb::StatusRequest {}).await.ok()?.into_inner();
            s.agents
                .into_iter()
                .find(|a| a.site == "a" && a.sessions == Some(42))
        }
    })
    .await;
    assert_eq!(node.load, Some(0.35));
    assert!(node.load_unix_ms > 0);
    let sites_reply = admin.sites(pb::SitesRequest {}).await.unwrap().into_inner();
    let a = sites_reply.sites.iter().find(|s| s.id == "a").unwrap();
    assert_eq!((a.nodes, a.nodes_reporting, a.sessions), (1, 1, 42));
    assert!((a.load - 0.35).abs() < 1e-9);
    let b = sites_reply.sites.iter().find(|s| s.id == "b").unwrap();
    assert_eq!((b.nodes, b.sessions), (0, 0));
    let (_, metrics) = http_get(c.http_addr, "/metrics").await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert_eq!(sample(&metrics, "axon_site_sessions{site=\"a\"}"), Some(42.0));
    assert_eq!(sample(&metrics, "axon_site_nodes{site=\"a\"}"), Some(1.0));

    // The latest report wins, however fast they come.
    for n in 0..20 {
        let body = format!(r#"{{"sessions": {n}, "load": 0.5}}"#);
        assert_eq!(http_request(api, "PUT", "/v1/status", &body).await.0, 200);
    }
    eventually(WAIT, "the last report reaches the controller", || {
        let mut admin = admin.clone();
        async move {
            let s = admin.status(pb::StatusRequest {}).await.ok()?.into_inner();
            s.agents
                .into_iter()
                .find(|a| a.site == "a" && a.sessions == Some(19))
        }
    })
    .await;

    // Bad reports: refused with the reason, counted, and the last good one stays.
    for (body, reason) in [
        (r#"{"sessions": 5, "load": 1.5}"#, "load"),
        (r#"{"sessions": 5, "load": -0.1}"#, "load"),
        (r#"{"sessions": 20000000, "load": 0.1}"#, "sessions"),
        (r#"{"sessions": -1, "load": 0.1}"#, "malformed"),
        (r#"{"sessions": 5}"#, "malformed"),
        (r#"{"sessions": 5, "load": 0.1, "cpu": 3}"#, "malformed"),
        ("not json", "malformed"),
    ] {
        let (code, v) = http_request(api, "PUT", "/v1/status", body).await;
        assert_eq!(code, 400, "{body}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}: {v}");
        let (_, m) = http_get(api, "/metrics").await;
        let series = format!("axon_agent_status_rejected_total{{reason=\"{reason}\"}}");
        assert!(
            sample(m.as_str().unwrap(), &series).is_some_and(|n| n >= 1.0),
            "{body}: no {series}"
        );
    }
    let (_, v) = http_get(api, "/v1/status").await;
    assert_eq!(v["sessions"], 19);

    // A report the agent would never send, straight on a watch stream: the controller refuses
    // it with a counted reason and keeps the node's last good report.
    let mut watch = RouteDistributionClient::connect(endpoint(&c)).await.unwrap();
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::AgentHello {
            node: "raw".into(),
            site: "b".into(),
            applied: None,
            software: "test".into(),
        })),
    })
    .await
    .unwrap();
    let mut updates = watch.watch(ReceiverStream::new(rx)).await.unwrap().into_inner();
    updates.message().await.unwrap().unwrap();
    for st in [
        pb::NodeStatus {
            sessions: 1,
            load: f64::NAN,
        },
        pb::NodeStatus {
            sessions: 1,
            load: 7.0,
        },
        pb::NodeStatus {
            sessions: 1,
            load: 0.25,
        },
    ] {
        tx.send(pb::AgentMessage {
            body: Some(pb::agent_message::Body::Status(st)),
        })
        .await
        .unwrap();
    }
    eventually(WAIT, "the good report after two bad ones is kept", || {
        let mut admin = admin.clone();
        async move {
            let s = admin.status(pb::StatusRequest {}).await.ok()?.into_inner();
            s.agents
                .into_iter()
                .find(|a| a.node == "raw" && a.load == Some(0.25))
        }
    })
    .await;
    let (_, m) = http_get(c.http_addr, "/metrics").await;
    assert_eq!(
        sample(
            m.as_str().unwrap(),
            "axon_ingest_rejected_total{reason=\"bad_status\"}"
        ),
        Some(2.0)
    );

    agent.shutdown().await;
    c.shutdown().await;
}
