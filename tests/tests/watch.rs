//! The controller's own `Watch` server (it writes pre-encoded updates without tonic's encoder)
//! against tonic's generated client: what it writes decodes as gRPC messages, refusals are gRPC
//! statuses, acknowledgements are recorded, and a controller shutting down ends every stream
//! with UNAVAILABLE.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use mesh::{controller_config, endpoint, eventually, four_sites};
use proto::v1 as pb;
use proto::v1::route_distribution_client::RouteDistributionClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

fn hello(node: &str, site: &str) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::AgentHello {
            node: node.into(),
            site: site.into(),
            applied: None,
            software: "test".into(),
        })),
    }
}

/// Opens a stream that starts with `first`; returns the sender for later messages.
async fn open(
    client: &mut RouteDistributionClient<Channel>,
    first: pb::AgentMessage,
) -> (
    mpsc::Sender<pb::AgentMessage>,
    Result<tonic::Streaming<pb::RouteUpdate>, tonic::Status>,
) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.unwrap();
    let r = client
        .watch(ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    (tx, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_server_speaks_grpc_to_the_generated_client() {
    let sites = four_sites();
    let c = controller::daemon::start(controller_config(&sites, None))
        .await
        .unwrap();
    let mut client = RouteDistributionClient::connect(endpoint(&c)).await.unwrap();

    // A stream must open with a hello, from a known site.
    let ack = pb::AgentMessage {
        body: Some(pb::agent_message::Body::Ack(pb::Ack::default())),
    };
    let (_tx, r) = open(&mut client, ack).await;
    assert_eq!(r.err().map(|s| s.code()), Some(Code::InvalidArgument));
    let (_tx, r) = open(&mut client, hello("n1", "nowhere")).await;
    let status = r.err().unwrap();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("nowhere"), "{}", status.message());

    // Two nodes of one site: the same update, each with its own nonce.
    let (tx1, r1) = open(&mut client, hello("a-1", "a")).await;
    let (_tx2, r2) = open(&mut client, hello("a-2", "a")).await;
    let (mut s1, mut s2) = (r1.unwrap(), r2.unwrap());
    let u1 = s1.message().await.unwrap().unwrap();
    let u2 = s2.message().await.unwrap().unwrap();
    assert_eq!(u1.site, "a");
    assert!(u1.version.is_some());
    assert_eq!(u1.known_sites.len(), sites.len());
    assert!(u1.nonce.starts_with("a-1-"), "{}", u1.nonce);
    assert!(u2.nonce.starts_with("a-2-"), "{}", u2.nonce);
    assert_eq!(
        pb::RouteUpdate {
            nonce: String::new(),
            ..u1.clone()
        },
        pb::RouteUpdate {
            nonce: String::new(),
            ..u2.clone()
        }
    );

    // An ACK is recorded as the node's applied version.
    tx1.send(pb::AgentMessage {
        body: Some(pb::agent_message::Body::Ack(pb::Ack {
            version: u1.version,
            nonce: u1.nonce.clone(),
        })),
    })
    .await
    .unwrap();
    let want = u1.version.map(|v| (v.epoch, v.version)).unwrap();
    let shared = c.shared.clone();
    eventually(WAIT, "the controller records the acknowledged version", || {
        let applied = shared.agents().get("a-1").map(|r| r.applied);
        async move { (applied == Some(want)).then_some(()) }
    })
    .await;

    // A new table reaches the open streams.
    {
        let mut core = c.shared.core();
        core.invalidate();
    }
    c.shared.compute_and_publish().unwrap();
    let next = s1.message().await.unwrap().unwrap();
    assert!(next.version.unwrap().version > u1.version.unwrap().version);
    assert_ne!(next.nonce, u1.nonce);

    // Shutdown ends each stream with UNAVAILABLE, not a broken connection.
    c.shutdown().await;
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match s2.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(end.err().map(|s| s.code()), Some(Code::Unavailable));
}

#[tokio::test]
async fn an_unknown_method_of_the_service_is_unimplemented() {
    let c = controller::daemon::start(controller_config(&four_sites(), None))
        .await
        .unwrap();
    let channel = Channel::from_shared(endpoint(&c))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/axon.v1.RouteDistribution/Nope");
    let codec = tonic_prost::ProstCodec::<pb::AgentMessage, pb::RouteUpdate>::default();
    let r = grpc
        .unary(tonic::Request::new(hello("x", "a")), path, codec)
        .await;
    assert_eq!(r.err().map(|s| s.code()), Some(Code::Unimplemented));
    c.shutdown().await;
}
