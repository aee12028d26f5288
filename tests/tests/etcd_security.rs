//! A controller on a secured etcd, as production runs it: TLS with client certificates
//! (`store.etcd_tls`), and etcd's own users (`store.etcd_user`). Real etcd servers on loopback.
//! Needs the `etcd` binary (`apt-get install etcd-server`; `scripts/test.sh` installs it).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use controller::config::{EtcdTls, StoreConfig};
use controller::ha::{Etcd, LocalEtcd};
use mesh::{endpoint, eventually, four_sites};
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;

/// A replica's configuration on the etcd at `url`, leading as soon as it can.
fn replica(url: &str) -> controller::ControllerConfig {
    let mut cfg = mesh::controller_config(&four_sites(), None);
    cfg.store.kind = "etcd".into();
    cfg.store.etcd_endpoints = vec![url.to_string()];
    cfg.store.lease_ttl_s = 2;
    cfg.store.leader_warmup_ms = 0;
    cfg
}

/// Waits until the replica leads and has published a table through etcd.
async fn publishes(c: &controller::ControllerHandle) {
    eventually(
        Duration::from_secs(30),
        "the replica to lead and publish",
        || async {
            let mut admin = AdminClient::connect(endpoint(c)).await.ok()?;
            let s = admin.status(pb::StatusRequest {}).await.ok()?.into_inner();
            (s.leader && s.table.is_some_and(|t| t.version > 0)).then_some(())
        },
    )
    .await;
}

/// The epoch the replica leads under (it must lead).
fn leading_epoch(c: &controller::ControllerHandle) -> u64 {
    c.shared
        .leadership
        .borrow()
        .fence
        .as_ref()
        .expect("leading")
        .epoch()
}

/// Replaced TLS files found by the periodic check, by result.
fn file_changes(c: &controller::ControllerHandle, result: &str) -> u64 {
    let text = c.shared.metrics.render();
    let line = format!("axon_tls_file_changes_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Drains `site` on the replica, which must then write the drain to etcd: the drain is
/// refused while it does not lead, or reported unstored while etcd refuses its writes.
async fn drains_through_etcd(c: &controller::ControllerHandle, site: &str) {
    eventually(Duration::from_secs(30), "a drain stored through etcd", || async {
        let mut admin = AdminClient::connect(endpoint(c)).await.ok()?;
        let reply = admin
            .drain(pb::DrainRequest {
                kind: "site".into(),
                name: site.into(),
                reason: "maintenance".into(),
                // What is checked is the write, not the guardrails (no prober reports).
                force: true,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        assert!(reply.refused.is_empty(), "{reply:?}");
        Some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_leads_on_an_etcd_that_requires_tls_and_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    // The mesh's CA and the controller's certificate; etcd's server certificate names the
    // loopback address the replica dials.
    prober::tls::generate_mesh(&pki, &["a"]).unwrap();
    let (server, _) = prober::tls::issue(&pki, "etcd", &["127.0.0.1", "localhost"], 30).unwrap();
    let etcd = LocalEtcd::start_tls(dir.path(), &server).await.unwrap();
    assert!(etcd.url.starts_with("https://"), "{}", etcd.url);

    let tls = EtcdTls {
        ca: pki.join("ca.pem"),
        cert: Some(pki.join("controller.pem")),
        key: Some(pki.join("controller.key")),
    };
    let mut cfg = replica(&etcd.url);
    cfg.store.etcd_tls = Some(tls.clone());
    cfg.store.etcd_files_recheck_s = 1;
    let c = controller::start(cfg.clone()).await.unwrap();
    publishes(&c).await;
    // The client certificate's end is exported beside the daemon's own, for the expiry alerts.
    let tls_metrics = &c.shared.metrics.tls;
    assert_eq!(
        tls_metrics.expiry("etcd_cert"),
        Some(proto::auth::earliest_expiry(&pki.join("controller.pem")).unwrap())
    );
    assert!(tls_metrics.expiry("etcd_ca").is_some());
    // The certificate is renewed in place (a new key, a nearer end): the replica dials with
    // it, exports its end, and leads on under the same lease.
    let epoch = leading_epoch(&c);
    let (_, renewed) = prober::tls::issue(&pki, "controller", &["controller.axon"], 10).unwrap();
    eventually(
        Duration::from_secs(30),
        "the renewed certificate in force",
        || async { (tls_metrics.expiry("etcd_cert") == Some(renewed)).then_some(()) },
    )
    .await;
    assert_eq!(file_changes(&c, "loaded"), 1);
    assert_eq!(leading_epoch(&c), epoch, "the lease was kept");
    drains_through_etcd(&c, "d").await;
    c.shutdown().await;

    // etcd refuses a client without a certificate, and a plaintext one.
    let store = |tls: Option<EtcdTls>, url: &str| StoreConfig {
        kind: "etcd".into(),
        etcd_endpoints: vec![url.to_string()],
        etcd_tls: tls,
        ..StoreConfig::default()
    };
    let reads = async |s: StoreConfig| match Etcd::connect(&s).await {
        Ok(e) => e.load().await.is_ok(),
        Err(_) => false,
    };
    assert!(
        reads(store(Some(tls.clone()), &etcd.url)).await,
        "the replica's own files"
    );
    let no_cert = EtcdTls {
        cert: None,
        key: None,
        ..tls.clone()
    };
    assert!(
        !reads(store(Some(no_cert), &etcd.url)).await,
        "no client certificate"
    );
    let plain_url = etcd.url.replacen("https://", "http://", 1);
    assert!(!reads(store(None, &plain_url)).await, "plaintext");

    // The configuration says what goes together before anything is dialled.
    let mut mixed = cfg.clone();
    mixed.store.etcd_endpoints = vec![plain_url];
    let e = mixed.validate().unwrap_err().to_string();
    assert!(e.contains("must start with `https://`"), "{e}");
    let mut half = cfg;
    half.store.etcd_tls = Some(EtcdTls { key: None, ..tls });
    let e = half.validate().unwrap_err().to_string();
    assert!(e.contains("`cert` and `key` go together"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_leads_on_an_etcd_with_authentication_as_its_own_user() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = LocalEtcd::start(dir.path()).await.unwrap();
    // etcd's own users: root (required before auth is on), and axon with read and write on
    // the mesh's prefix only.
    let mut admin = etcd_client::Client::connect([etcd.url.as_str()], None)
        .await
        .unwrap();
    admin.user_add("root", "root-pw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("axon").await.unwrap();
    admin
        .role_grant_permission("axon", etcd_client::Permission::read_write("/axon").with_prefix())
        .await
        .unwrap();
    admin.user_add("axon", "axon-pw", None).await.unwrap();
    admin.user_grant_role("axon", "axon").await.unwrap();
    admin.auth_enable().await.unwrap();

    let password = dir.path().join("etcd-password");
    std::fs::write(&password, "axon-pw\n").unwrap();
    let mut cfg = replica(&etcd.url);
    cfg.store.etcd_user = Some("axon".into());
    cfg.store.etcd_password_file = Some(password.clone());
    cfg.store.etcd_compact_s = 1;
    cfg.store.etcd_files_recheck_s = 1;
    let c = controller::start(cfg.clone()).await.unwrap();
    publishes(&c).await;
    // The user's rights cover all the leader does, compaction included.
    let compactions = |r: &str| c.shared.metrics.etcd_compactions.with_label_values(&[r]).get();
    eventually(
        Duration::from_secs(30),
        "a compaction as the axon user",
        || async { (compactions("done") + compactions("failed") >= 2).then_some(()) },
    )
    .await;
    assert_eq!(compactions("failed"), 0);

    // The password is rotated: etcd stops taking the old one's tokens at once. A file that
    // does not work is refused (the connection in force stays); the new password is dialled
    // with, and the replica stores a drain through it.
    let mut root = etcd_client::Client::connect(
        [etcd.url.as_str()],
        Some(etcd_client::ConnectOptions::new().with_user("root", "root-pw")),
    )
    .await
    .unwrap();
    let mut old = etcd_client::Client::connect(
        [etcd.url.as_str()],
        Some(etcd_client::ConnectOptions::new().with_user("axon", "axon-pw")),
    )
    .await
    .unwrap();
    root.user_change_password("axon", "axon-pw-2").await.unwrap();
    assert!(
        old.get("/axon/state", None).await.is_err(),
        "the old password still reads"
    );
    std::fs::write(&password, "not-it\n").unwrap();
    eventually(Duration::from_secs(30), "a wrong password refused", || async {
        (file_changes(&c, "refused") == 1).then_some(())
    })
    .await;
    std::fs::write(&password, "axon-pw-2\n").unwrap();
    eventually(Duration::from_secs(30), "the new password in force", || async {
        (file_changes(&c, "loaded") == 1).then_some(())
    })
    .await;
    drains_through_etcd(&c, "d").await;
    let state = root.get("/axon/state", None).await.unwrap();
    let state: serde_json::Value = serde_json::from_slice(state.kvs()[0].value()).unwrap();
    assert_eq!(state["drains"][0]["target"]["name"], "d", "{state}");
    c.shutdown().await;

    // A wrong password, or no user at all, reads nothing.
    std::fs::write(&password, "wrong").unwrap();
    let reads = async |s: &StoreConfig| match Etcd::connect(s).await {
        Ok(e) => e.load().await.is_ok(),
        Err(_) => false,
    };
    assert!(!reads(&cfg.store).await, "a wrong password");
    let anonymous = StoreConfig {
        etcd_user: None,
        etcd_password_file: None,
        ..cfg.store.clone()
    };
    assert!(!reads(&anonymous).await, "no user");
    // A user without its password file is refused by the configuration.
    let mut half = cfg;
    half.store.etcd_password_file = None;
    let e = half.validate().unwrap_err().to_string();
    assert!(e.contains("go together"), "{e}");
}
