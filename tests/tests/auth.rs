//! The control plane on mutual TLS: who may report, watch and operate, and for which sites.
//! Certificates come from a development CA made for the test; the controller, a real agent and
//! raw gRPC clients talk over real TLS on loopback. Certificates rotated in place serve new
//! connections after a reload.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::Path;
use std::time::Duration;

use mesh::{agent_config, controller_config, eventually, four_sites, http_get};
use prober::tls::{generate_mesh, issue, mesh_files};
use proto::auth::TlsFiles;
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;
use proto::v1::probe_ingest_client::ProbeIngestClient;
use proto::v1::route_distribution_client::RouteDistributionClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const WAIT: Duration = Duration::from_secs(20);

async fn channel(url: &str, tls: &TlsFiles) -> Channel {
    proto::auth::endpoint(url, Some(tls))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// TLS with the right CA but no client certificate.
async fn anonymous(url: &str, ca: &Path) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()))
        .domain_name(proto::auth::CONTROLLER_NAME);
    tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Opens a watch stream saying hello for `site`; the status code if it is refused.
async fn watch_as(ch: Channel, site: &str) -> Result<(), Code> {
    let (tx, rx) = mpsc::channel(2);
    tx.send(pb::AgentMessage {
        body: Some(pb::agent_message::Body::Hello(pb::AgentHello {
            node: format!("{site}-raw"),
            site: site.into(),
            applied: None,
            software: "test".into(),
        })),
    })
    .await
    .unwrap();
    let mut s = RouteDistributionClient::new(ch)
        .watch(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.code())?
        .into_inner();
    s.message()
        .await
        .map_err(|e| e.code())?
        .map(|_| ())
        .ok_or(Code::Unknown)
}

/// Opens a report stream saying hello for `site`; the status code if it is refused.
async fn report_as(ch: Channel, site: &str) -> Result<(), Code> {
    let (tx, rx) = mpsc::channel(2);
    tx.send(pb::ProberMessage {
        body: Some(pb::prober_message::Body::Hello(pb::ProberHello {
            site: site.into(),
            instance: 1,
            software: "test".into(),
        })),
    })
    .await
    .unwrap();
    tx.send(pb::ProberMessage {
        body: Some(pb::prober_message::Body::Report(pb::ProbeReport {
            seq: 1,
            body: None,
        })),
    })
    .await
    .unwrap();
    let mut acks = ProbeIngestClient::new(ch)
        .report(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.code())?
        .into_inner();
    acks.message()
        .await
        .map_err(|e| e.code())?
        .map(|_| ())
        .ok_or(Code::Unknown)
}

async fn status_as(ch: Channel, token: Option<&str>) -> Result<pb::StatusReply, Code> {
    let mut req = tonic::Request::new(pb::StatusRequest {});
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    AdminClient::new(ch)
        .status(req)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|e| e.code())
}

/// What `printf %s TOKEN | sha256sum` prints.
fn sha256_hex(s: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, s.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_speaks_mutual_tls_and_checks_every_role() {
    proto::auth::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let sites = four_sites();
    let ids: Vec<&str> = sites.iter().map(|s| s.id).collect();
    generate_mesh(&certs, &ids).unwrap();
    let mut cfg = controller_config(&sites, None);
    cfg.tls = Some(mesh_files(&certs, "controller"));
    cfg.operator_tokens = vec![controller::auth::OperatorToken {
        name: "ci".into(),
        sha256: sha256_hex("let-me-in"),
    }];
    let c = controller::daemon::start(cfg).await.unwrap();
    let url = format!("https://{}", c.grpc_addr);

    // A real agent on TLS gets its table.
    let mut acfg = agent_config(dir.path(), "a", vec![url.clone()]);
    acfg.tls = Some(mesh_files(&certs, "a"));
    let agent = agent::daemon::start(acfg).await.unwrap();
    eventually(WAIT, "the agent holds a table over TLS", || async {
        let (code, _) = http_get(agent.http_addr, "/v1/routes").await;
        (code == 200).then_some(())
    })
    .await;
    // Plaintext to a TLS controller goes nowhere.
    let plain = AdminClient::connect(format!("http://{}", c.grpc_addr)).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut a) => a.status(pb::StatusRequest {}).await.is_err(),
    };
    assert!(refused, "a plaintext client was served");

    // Watch: the agent role, for the sites the certificate names.
    let a = mesh_files(&certs, "a");
    assert_eq!(watch_as(channel(&url, &a).await, "a").await, Ok(()));
    assert_eq!(
        watch_as(channel(&url, &a).await, "b").await,
        Err(Code::PermissionDenied)
    );
    let operator = mesh_files(&certs, "operator");
    assert_eq!(
        watch_as(channel(&url, &operator).await, "a").await,
        Err(Code::PermissionDenied),
        "an operator is not an agent"
    );
    assert_eq!(
        watch_as(anonymous(&url, &certs.join("ca.pem")).await, "a").await,
        Err(Code::Unauthenticated)
    );
    // A prober-only certificate for site a may report but not watch.
    let prober_only = issue(&certs, "a-prober", &["a", "prober.axon"]).unwrap();
    assert_eq!(
        watch_as(channel(&url, &prober_only).await, "a").await,
        Err(Code::PermissionDenied)
    );

    // Report: the prober role, for the sites the certificate names.
    assert_eq!(report_as(channel(&url, &prober_only).await, "a").await, Ok(()));
    assert_eq!(
        report_as(channel(&url, &prober_only).await, "c").await,
        Err(Code::PermissionDenied)
    );
    let agent_only = issue(&certs, "a-agent", &["a", "agent.axon"]).unwrap();
    assert_eq!(
        report_as(channel(&url, &agent_only).await, "a").await,
        Err(Code::PermissionDenied)
    );

    // Admin: the operator role, by certificate or token.
    let reply = status_as(channel(&url, &operator).await, None).await.unwrap();
    assert_eq!(reply.sites, 4);
    assert_eq!(
        status_as(channel(&url, &a).await, None).await.err(),
        Some(Code::PermissionDenied)
    );
    let ca = certs.join("ca.pem");
    assert_eq!(
        status_as(anonymous(&url, &ca).await, None).await.err(),
        Some(Code::Unauthenticated)
    );
    assert!(
        status_as(anonymous(&url, &ca).await, Some("let-me-in"))
            .await
            .is_ok()
    );
    assert_eq!(
        status_as(anonymous(&url, &ca).await, Some("guess")).await.err(),
        Some(Code::Unauthenticated)
    );

    // The drain's author is who the credentials prove, not what the request claims.
    let mut admin = AdminClient::new(channel(&url, &operator).await);
    let r = admin
        .drain(pb::DrainRequest {
            kind: "site".into(),
            name: "c".into(),
            reason: "maintenance".into(),
            author: "somebody-else".into(),
            force: false,
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.refused.is_empty(), "{}", r.refused);
    let drains = admin.drains(pb::DrainsRequest {}).await.unwrap().into_inner();
    assert_eq!(drains.drains.len(), 1);
    assert_eq!(drains.drains[0].author, "operator");

    // A certificate from another CA does not get past the handshake.
    let other = dir.path().join("other");
    generate_mesh(&other, &["a"]).unwrap();
    let foreign = proto::auth::endpoint(
        &url,
        Some(&TlsFiles {
            ca: certs.join("ca.pem"),
            ..mesh_files(&other, "a")
        }),
    )
    .unwrap()
    .connect()
    .await;
    let refused = match foreign {
        Err(_) => true,
        Ok(ch) => watch_as(ch, "a").await.is_err(),
    };
    assert!(refused, "a certificate from a foreign CA was accepted");

    let (_, m) = http_get(c.http_addr, "/metrics").await;
    let m = m.as_str().unwrap().to_string();
    for role in ["agent", "prober", "operator"] {
        assert!(
            m.contains(&format!("axon_auth_refused_total{{role=\"{role}\"}}")),
            "no refusals counted for {role}"
        );
    }
    agent.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_serve_new_connections_after_a_reload_and_old_ones_go_on() {
    proto::auth::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (old, new, own) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("own"),
    );
    let sites = four_sites();
    generate_mesh(&old, &["a"]).unwrap();
    generate_mesh(&new, &["a"]).unwrap();
    std::fs::create_dir_all(&own).unwrap();
    let files = mesh_files(&own, "controller");
    let install = |from: &Path, ca: Vec<u8>| {
        let src = mesh_files(from, "controller");
        std::fs::write(&files.ca, ca).unwrap();
        std::fs::copy(&src.cert, &files.cert).unwrap();
        std::fs::copy(&src.key, &files.key).unwrap();
    };
    let ca = |d: &Path| std::fs::read(d.join("ca.pem")).unwrap();
    install(&old, ca(&old));
    let mut cfg = controller_config(&sites, None);
    cfg.tls = Some(files.clone());
    let c = controller::daemon::start(cfg.clone()).await.unwrap();
    let url = format!("https://{}", c.grpc_addr);

    // An operator of the old CA is served, and keeps its connection; one of the new CA
    // cannot even complete a handshake.
    let old_op = channel(&url, &mesh_files(&old, "operator")).await;
    assert!(status_as(old_op.clone(), None).await.is_ok());
    let new_files = mesh_files(&new, "operator");
    let before = async {
        let ch = proto::auth::endpoint(&url, Some(&new_files))
            .unwrap()
            .connect()
            .await
            .ok()?;
        status_as(ch, None).await.ok()
    };
    assert!(before.await.is_none(), "served under a CA not yet trusted");

    // Files that do not load are refused, and the certificates in force stay.
    std::fs::write(&files.key, "not a key").unwrap();
    let e = c.reload(cfg.clone()).unwrap_err().to_string();
    assert!(e.contains("tls"), "{e}");
    assert!(
        status_as(channel(&url, &mesh_files(&old, "operator")).await, None)
            .await
            .is_ok()
    );

    // Rotated in place (both CAs trusted, the controller's certificate from the new one) and
    // reloaded: a new connection of the new CA is served, the old connection goes on.
    let mut both = ca(&old);
    both.extend(ca(&new));
    install(&new, both);
    c.reload(cfg).unwrap();
    let fresh = channel(&url, &new_files).await;
    assert!(
        status_as(fresh, None).await.is_ok(),
        "the new certificate did not serve"
    );
    assert!(
        status_as(old_op, None).await.is_ok(),
        "the connection up before was cut"
    );
    c.shutdown().await;
}
