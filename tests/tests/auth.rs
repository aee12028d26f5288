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
    let prober_only = issue(&certs, "a-prober", &["a", "prober.axon"], 30).unwrap().0;
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
    let agent_only = issue(&certs, "a-agent", &["a", "agent.axon"], 30).unwrap().0;
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
            duration_s: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.refused.is_empty(), "{}", r.refused);
    let drains = admin
        .drains(pb::DrainsRequest::default())
        .await
        .unwrap()
        .into_inner();
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
    let r = Rotation::new(dir.path());
    let (old, new, files) = (&r.old, &r.new, &r.files);
    let sites = four_sites();
    let mut cfg = controller_config(&sites, None);
    cfg.tls = Some(files.clone());
    let c = controller::daemon::start(cfg.clone()).await.unwrap();
    let url = format!("https://{}", c.grpc_addr);

    // An operator of the old CA is served, and keeps its connection; one of the new CA
    // cannot even complete a handshake.
    let old_op = channel(&url, &mesh_files(old, "operator")).await;
    assert!(status_as(old_op.clone(), None).await.is_ok());
    let new_files = mesh_files(new, "operator");
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
        status_as(channel(&url, &mesh_files(old, "operator")).await, None)
            .await
            .is_ok()
    );

    // Rotated in place (both CAs trusted, the controller's certificate from the new one) and
    // reloaded: a new connection of the new CA is served, the old connection goes on.
    r.rotate();
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

/// Two meshes' certificates, `old` and `new` (each with a site `a`), and a controller's own
/// TLS files, at first the old mesh's: what a rotation in place replaces.
struct Rotation {
    old: std::path::PathBuf,
    new: std::path::PathBuf,
    files: TlsFiles,
}

impl Rotation {
    fn new(dir: &Path) -> Rotation {
        let r = Rotation {
            old: dir.join("old"),
            new: dir.join("new"),
            files: mesh_files(&dir.join("own"), "controller"),
        };
        generate_mesh(&r.old, &["a"]).unwrap();
        generate_mesh(&r.new, &["a"]).unwrap();
        std::fs::create_dir_all(dir.join("own")).unwrap();
        r.install(&r.old, ca_pem(&r.old));
        r
    }

    /// Replaces the files in place: `from`'s controller certificate, trusting `ca`.
    fn install(&self, from: &Path, ca: Vec<u8>) {
        let src = mesh_files(from, "controller");
        std::fs::write(&self.files.ca, ca).unwrap();
        std::fs::copy(&src.cert, &self.files.cert).unwrap();
        std::fs::copy(&src.key, &self.files.key).unwrap();
    }

    /// The rotation: both CAs trusted, the controller's certificate from the new one.
    fn rotate(&self) {
        let mut both = ca_pem(&self.old);
        both.extend(ca_pem(&self.new));
        self.install(&self.new, both);
    }
}

fn ca_pem(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("ca.pem")).unwrap()
}

/// The value of one series in a Prometheus text exposition (`name{labels}` as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Files replaced in place are loaded without a signal once they settle (`tls.recheck_s`),
/// files that do not load are counted and change nothing, and every daemon exports when the
/// certificates in force expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_certificates_load_without_a_signal_and_their_expiry_is_exported() {
    proto::auth::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut r = Rotation::new(dir.path());
    r.files.recheck_s = 1;
    // The next controller certificate ends sooner than the first: the gauge must move.
    issue(&r.new, "controller", &[proto::auth::CONTROLLER_NAME], 30).unwrap();
    let (old, new, files) = (&r.old, &r.new, &r.files);
    let sites = four_sites();
    let mut cfg = controller_config(&sites, None);
    cfg.tls = Some(files.clone());
    let c = controller::daemon::start(cfg).await.unwrap();
    let url = format!("https://{}", c.grpc_addr);
    let metrics = || async {
        http_get(c.http_addr, "/metrics")
            .await
            .1
            .as_str()
            .unwrap()
            .to_string()
    };
    let expiry = |p: &Path| proto::auth::earliest_expiry(p).unwrap() as f64;
    let cert_gauge = "axon_tls_certificate_expiry_timestamp_seconds{file=\"cert\"}";
    let m = metrics().await;
    assert_eq!(
        sample(&m, cert_gauge),
        Some(expiry(&old.join("controller.pem"))),
        "{m}"
    );
    assert_eq!(
        sample(&m, "axon_tls_certificate_expiry_timestamp_seconds{file=\"ca\"}"),
        Some(expiry(&old.join("ca.pem")))
    );

    // An agent exports its own, read from the files its connections use.
    let mut acfg = agent_config(dir.path(), "a", vec![url.clone()]);
    acfg.tls = Some(mesh_files(old, "a"));
    let agent = agent::start(acfg).await.unwrap();
    let (_, am) = http_get(agent.metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(
        sample(am.as_str().unwrap(), cert_gauge),
        Some(expiry(&old.join("a.pem")))
    );

    let old_op = channel(&url, &mesh_files(old, "operator")).await;
    assert!(status_as(old_op.clone(), None).await.is_ok());
    let new_files = mesh_files(new, "operator");

    // A key that does not load: refused once it settles, counted, and the files in force stay.
    std::fs::write(&files.key, "not a key").unwrap();
    eventually(WAIT, "the broken key refused", || async {
        (sample(
            &metrics().await,
            "axon_tls_file_changes_total{result=\"refused\"}",
        )? >= 1.0)
            .then_some(())
    })
    .await;
    assert!(
        status_as(channel(&url, &mesh_files(old, "operator")).await, None)
            .await
            .is_ok()
    );

    // Rotated in place, no signal: new connections of the new CA are served once the check
    // has loaded the files, the connection opened before goes on, and the gauge follows.
    r.rotate();
    eventually(WAIT, "the rotation loaded", || async {
        (sample(&metrics().await, "axon_tls_file_changes_total{result=\"loaded\"}")? >= 1.0).then_some(())
    })
    .await;
    let fresh = channel(&url, &new_files).await;
    assert!(
        status_as(fresh, None).await.is_ok(),
        "the new certificate did not serve"
    );
    assert!(
        status_as(old_op, None).await.is_ok(),
        "the connection up before was cut"
    );
    let rotated = expiry(&new.join("controller.pem"));
    assert_ne!(rotated, expiry(&old.join("controller.pem")));
    assert_eq!(sample(&metrics().await, cert_gauge), Some(rotated));
    agent.shutdown().await;
    c.shutdown().await;
}
