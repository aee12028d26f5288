//! High availability on a real etcd: three controller replicas, one leader; followers serve
//! the leader's tables; the leader dies and another takes over within the lease; no agent
//! ever sees `(epoch, version)` go backwards; drains and the route-change journal survive; a
//! deposed leader is fenced.
//! Needs the `etcd` binary (`apt-get install etcd-server`; `scripts/test.sh` installs it).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use controller::ControllerError;
use controller::ha::{Etcd, LocalEtcd};
use mesh::{Mesh, endpoint, eventually, four_sites, relay_rtt as rtt};
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;

/// The moves of a → b off the relay c that a replica's journal lists, each with the epoch of
/// the table that made it.
async fn moves_off_c(c: &controller::ControllerHandle) -> Vec<u64> {
    let Ok(mut admin) = AdminClient::connect(endpoint(c)).await else {
        return Vec::new();
    };
    let req = pb::ChangesRequest {
        site: "a".into(),
        ..Default::default()
    };
    let Ok(reply) = admin.changes(req).await else {
        return Vec::new();
    };
    reply
        .into_inner()
        .changes
        .iter()
        .filter(|r| (r.src.as_str(), r.dst.as_str()) == ("a", "b") && r.before == ["a", "c", "b"])
        .filter(|r| r.after != ["a", "c", "b"] && !r.reason.is_empty())
        .filter_map(|r| r.version.map(|v| v.epoch))
        .collect()
}

/// The `(epoch, version)` an agent holds, if any.
async fn applied(mesh: &Mesh, site: &str) -> Option<(u64, u64)> {
    let (status, v) = mesh.agent_get(site, "/v1/routes").await;
    if status != 200 {
        return None;
    }
    Some((v["epoch"].as_u64()?, v["version"].as_u64()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_within_the_lease_and_no_agent_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = LocalEtcd::start(dir.path()).await.unwrap();
    let mesh = Mesh::start_replicated(four_sites(), rtt, &etcd.url, 3).await;
    let long = Duration::from_secs(60);

    // One leader; every agent, whichever replica it watches, holds the leader's relay path.
    let first = {
        let mesh = &mesh;
        eventually(long, "exactly one leader", || async { mesh.leader() }).await
    };
    let first_epoch = {
        let (_, c) = mesh.running().find(|(i, _)| *i == first).unwrap();
        c.shared.leadership.borrow().fence.as_ref().unwrap().epoch()
    };
    for (from, to, path) in [("a", "b", ["a", "c", "b"]), ("b", "a", ["b", "c", "a"])] {
        eventually(long, "agents to hold the relay path", || async {
            (mesh.primary(from, to).await? == path).then_some(())
        })
        .await;
    }
    // c → b blackholed: the leader moves a → b off c, and every follower's journal lists
    // the move, read back from the per-site rows in etcd (and a follower answers `Changes`
    // itself).
    let leader = mesh.running().find(|(i, _)| *i == first).unwrap().1;
    let mut client = etcd_client::Client::connect([etcd.url.as_str()], None)
        .await
        .unwrap();
    let rev = async |client: &mut etcd_client::Client, key: &str| {
        client.get(key, None).await.unwrap().kvs()[0].mod_revision()
    };
    let config_before = rev(&mut client, "/axon/config").await;
    let log_before = rev(&mut client, "/axon/drain_log").await;
    let (writes, version) = (
        leader.shared.metrics.etcd_site_writes.get(),
        leader.shared.metrics.table_version.get(),
    );
    mesh.blackhole("c", "b", true);
    for (i, c) in mesh.running().filter(|(i, _)| *i != first) {
        eventually(
            long,
            &format!("follower {i} to record a → b leaving c"),
            || async {
                let epochs = moves_off_c(c).await;
                epochs.contains(&first_epoch).then_some(())
            },
        )
        .await;
    }
    mesh.blackhole("c", "b", false);
    eventually(long, "a → b back on the relay", || async {
        (mesh.primary("a", "b").await? == ["a", "c", "b"]).then_some(())
    })
    .await;
    // Those tables wrote only the sites they moved to etcd, not all four each time.
    let tables = leader.shared.metrics.table_version.get() - version;
    let written = leader.shared.metrics.etcd_site_writes.get() - writes;
    assert!(tables >= 1, "{tables} tables");
    assert!(
        written < 4 * tables as u64,
        "{written} site keys for {tables} tables of 4 sites"
    );
    // Nor the leader's configuration or drain log, which did not change.
    assert_eq!(rev(&mut client, "/axon/config").await, config_before);
    assert_eq!(rev(&mut client, "/axon/drain_log").await, log_before);

    // A follower reloaded with other hysteresis says its routes would differ from the
    // leader's, in its status and its metrics; reloaded back, it agrees again.
    {
        let (_, f) = mesh.running().find(|(i, _)| *i != first).unwrap();
        let mine = f.shared.core().config().clone();
        let mut other = mine.clone();
        other.engine.hysteresis.switch_after += 2;
        f.reload(other).unwrap();
        let differs = || async {
            let mut admin = AdminClient::connect(endpoint(f)).await.ok()?;
            let s = admin.status(pb::StatusRequest {}).await.ok()?.into_inner();
            Some(s.config_differs)
        };
        eventually(long, "the follower to see it differs", || async {
            (differs().await? == ["engine"]).then_some(())
        })
        .await;
        assert_eq!(f.shared.metrics.config_matches_leader.get(), 0);
        f.reload(mine).unwrap();
        eventually(long, "the follower to agree again", || async {
            differs().await?.is_empty().then_some(())
        })
        .await;
        assert_eq!(f.shared.metrics.config_matches_leader.get(), 1);
    }

    let watched_follower = mesh
        .running()
        .filter(|(i, _)| *i != first)
        .any(|(_, c)| c.shared.agents().values().any(|a| a.connected));
    assert!(
        watched_follower,
        "no agent watches a follower: the test proves nothing"
    );

    // A follower refuses a drain and names the leader; the leader takes it.
    let (_, follower) = mesh.running().find(|(i, _)| *i != first).unwrap();
    let leader_url = endpoint(mesh.running().find(|(i, _)| *i == first).unwrap().1);
    let drain = pb::DrainRequest {
        kind: "site".into(),
        name: "d".into(),
        reason: "maintenance".into(),
        author: "test".into(),
        ..Default::default()
    };
    let refused = AdminClient::connect(endpoint(follower))
        .await
        .unwrap()
        .drain(drain.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains(&leader_url), "{refused:?}");
    let reply = AdminClient::connect(leader_url.clone())
        .await
        .unwrap()
        .drain(drain)
        .await
        .unwrap()
        .into_inner();
    assert!(reply.refused.is_empty(), "{reply:?}");
    eventually(long, "agent d to turn unready", || async {
        (mesh.agent_get("d", "/readyz").await.0 == 503).then_some(())
    })
    .await;
    // The drain log is stored under its own key, written when it changes; the state, written
    // with every table, carries the drains alone.
    {
        let json = async |key: &str| {
            let r = client.clone().get(key, None).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(r.kvs()[0].value()).unwrap()
        };
        let state = json("/axon/state").await;
        assert_eq!(state["drains"].as_array().unwrap().len(), 1, "{state}");
        assert_eq!(state["drain_log"], serde_json::json!([]), "{state}");
        let log = json("/axon/drain_log").await;
        assert_eq!(log[0]["action"], "drained", "{log}");
        assert_eq!(log[0]["author"], "test", "{log}");
    }

    // Watch every agent's (epoch, version) from now on: it may only move forward.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mesh = Arc::new(tokio::sync::Mutex::new(mesh));
    let watcher = {
        let (mesh, stop, rounds) = (mesh.clone(), stop.clone(), rounds.clone());
        tokio::spawn(async move {
            let mut last = std::collections::HashMap::new();
            let mut epochs = std::collections::HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                let m = mesh.lock().await;
                for site in ["a", "b", "c", "d"] {
                    if let Some(v) = applied(&m, site).await {
                        let prev = last.insert(site, v).unwrap_or((0, 0));
                        assert!(v >= prev, "agent {site} went back from {prev:?} to {v:?}");
                        epochs.insert(v.0);
                    }
                }
                drop(m);
                rounds.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            epochs.len()
        })
    };

    // The watcher has seen every agent on the old leader's table before it dies.
    eventually(long, "the watcher's first round", || async {
        (rounds.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;

    // The leader dies without resigning: another replica leads within the lease (2 s) and a
    // compute tick, and every agent gets a table of the new epoch.
    let old_fence = {
        let mut m = mesh.lock().await;
        let old = m.take_replica(first).unwrap();
        let fence = old.shared.leadership.borrow().fence.clone().unwrap();
        old.kill().await;
        fence
    };
    let t0 = Instant::now();
    let second = {
        let mesh = mesh.clone();
        eventually(long, "a new leader", move || {
            let mesh = mesh.clone();
            async move { mesh.lock().await.leader() }
        })
        .await
    };
    let elected = t0.elapsed();
    println!("leader killed: replica {second} leads after {elected:?}");
    assert_ne!(second, first);
    let new_epoch = {
        let m = mesh.lock().await;
        let (_, c) = m.running().find(|(i, _)| *i == second).unwrap();
        c.shared.leadership.borrow().fence.as_ref().unwrap().epoch()
    };
    assert!(new_epoch > old_fence.epoch());
    for site in ["a", "b", "c", "d"] {
        let mesh = mesh.clone();
        eventually(long, "every agent on the new epoch", move || {
            let mesh = mesh.clone();
            async move {
                let v = applied(&*mesh.lock().await, site).await?;
                (v.0 == new_epoch).then_some(())
            }
        })
        .await;
    }
    println!("every agent on the new leader's table after {:?}", t0.elapsed());

    // The drain survived the change of leader, and so did its entry in the drain log.
    assert_eq!(mesh.lock().await.agent_get("d", "/readyz").await.0, 503);
    {
        let m = mesh.lock().await;
        let (_, c) = m.running().find(|(i, _)| *i == second).unwrap();
        let reply = AdminClient::connect(endpoint(c))
            .await
            .unwrap()
            .drains(pb::DrainsRequest {
                history: true,
                limit: 10,
            })
            .await
            .unwrap()
            .into_inner();
        let log: Vec<(&str, &str, &str)> = reply
            .history
            .iter()
            .map(|e| (e.action.as_str(), e.name.as_str(), e.author.as_str()))
            .collect();
        assert_eq!(log, [("drained", "d", "test")], "{reply:?}");
    }

    // So did the history: the new leader's journal still lists the old leader's move.
    {
        let m = mesh.lock().await;
        let (_, c) = m.running().find(|(i, _)| *i == second).unwrap();
        let epochs = moves_off_c(c).await;
        assert!(
            epochs.contains(&old_fence.epoch()),
            "the new leader lost the journal: {epochs:?}"
        );
    }

    // The leaders kept etcd's history short: revisions a period old are gone.
    {
        let m = mesh.lock().await;
        let (_, c) = m.running().find(|(i, _)| *i == second).unwrap();
        let compactions = |r: &str| c.shared.metrics.etcd_compactions.with_label_values(&[r]).get();
        eventually(long, "the new leader compacting etcd", || async {
            (compactions("done") >= 1).then_some(())
        })
        .await;
        assert_eq!(compactions("failed"), 0);
        let mut client = etcd_client::Client::connect([etcd.url.as_str()], None)
            .await
            .unwrap();
        let old = client
            .get(
                "/axon/table/id",
                Some(etcd_client::GetOptions::new().with_revision(2)),
            )
            .await;
        assert!(
            old.as_ref().is_err_and(|e| e.to_string().contains("compacted")),
            "revision 2 still readable: {old:?}"
        );
    }

    // The deposed leader's writes are fenced.
    let store = controller::StoreConfig {
        kind: "etcd".into(),
        etcd_endpoints: vec![etcd.url.clone()],
        ..Default::default()
    };
    let e = Etcd::connect(&store).await.unwrap();
    let id = topology::TableId {
        epoch: topology::Epoch(old_fence.epoch()),
        version: topology::Version(1_000_000),
    };
    let r = e
        .publish(
            &old_fence,
            &Default::default(),
            None,
            None,
            id,
            0,
            &Default::default(),
            None,
        )
        .await;
    assert!(matches!(r, Err(ControllerError::Fenced)), "{r:?}");

    // One more round of the watcher, so that it sees the new epoch too.
    let seen = rounds.load(Ordering::Relaxed);
    eventually(long, "a watcher round on the new epoch", || async {
        (rounds.load(Ordering::Relaxed) > seen + 1).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let epochs = watcher.await.unwrap();
    assert!(epochs >= 2, "the agents saw {epochs} epoch(s)");
    Arc::try_unwrap(mesh).ok().unwrap().into_inner().shutdown().await;
}

/// A site's update as a mesh of `n` sites would send it: a row per destination, most of them
/// relayed, with a backup and a reason, and every site's name for validation.
fn big_update(n: usize, me: usize, id: topology::TableId) -> pb::RouteUpdate {
    let name = |i: usize| format!("provider-region-{i:04}");
    let path = |sites: Vec<String>| pb::RoutePath {
        sites,
        cost_ms: 123.456_789,
        mos: 4.21,
        r_factor: 86.5,
    };
    pb::RouteUpdate {
        version: Some(pb::TableVersion {
            epoch: id.epoch.0,
            version: id.version.0,
        }),
        nonce: String::new(),
        site: name(me),
        computed_unix_ms: 1_700_000_000_000,
        rows: (0..n)
            .filter(|&d| d != me)
            .map(|d| {
                let relay = name((d + 1) % n);
                pb::RouteRow {
                    dst: name(d),
                    primary: Some(path(vec![name(me), relay.clone(), name(d)])),
                    backup: Some(path(vec![name(me), name((d + 2) % n), name(d)])),
                    backup_disjoint: true,
                    reason: "relayed: 12.3 ms cheaper than the direct link".into(),
                }
            })
            .collect(),
        drains: Vec::new(),
        drained_sites: Vec::new(),
        known_sites: (0..n).map(name).collect(),
        max_relays: 2,
    }
}

/// A table of 500 sites (DESIGN's example of a large mesh) goes through etcd whole, within
/// its default request limit (1.5 MiB), and a follower reads it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_500_sites_goes_through_etcd_whole() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = LocalEtcd::start(dir.path()).await.unwrap();
    let store = controller::StoreConfig {
        kind: "etcd".into(),
        etcd_endpoints: vec![etcd.url.clone()],
        ..Default::default()
    };
    let e = Etcd::connect(&store).await.unwrap();
    // Leadership through etcd's election API, as `campaign` takes it.
    let lease = e.grant(Duration::from_secs(30)).await.unwrap();
    let fence = e.elect("http://127.0.0.1:1", lease).await.unwrap();
    let id = topology::TableId {
        epoch: topology::Epoch(fence.epoch()),
        version: topology::Version(7),
    };
    let n = 500;
    let encoded: std::collections::HashMap<topology::SiteId, bytes::Bytes> = (0..n)
        .map(|i| {
            let u = big_update(n, i, id);
            (
                topology::SiteId::new(u.site.clone()).unwrap(),
                proto::wire::EncodedRouteUpdate::encode_shared(&u),
            )
        })
        .collect();
    let bytes: usize = encoded.values().map(bytes::Bytes::len).sum();
    println!(
        "{n} sites: {} KB per site, {} MB per table",
        bytes / n / 1024,
        bytes >> 20
    );
    let written = e
        .publish(
            &fence,
            &Default::default(),
            None,
            None,
            id,
            1_700_000_000_000,
            &encoded,
            None,
        )
        .await
        .unwrap();
    assert_eq!(written, n);
    let mut cache = controller::ha::SiteCache::default();
    let read = e
        .read_published(None, &mut cache)
        .await
        .unwrap()
        .expect("the table, whole");
    assert_eq!(read.id, id);
    assert_eq!(read.encoded.len(), n);
    assert!(read.encoded.iter().all(|(s, b)| encoded[s] == *b));

    // The next table moves two sites' paths: only they are written, and a reader gets every
    // site stamped with the new table (the others' rows as they were).
    let next = topology::TableId {
        version: topology::Version(8),
        ..id
    };
    let mut moved = std::collections::HashSet::new();
    let mut all = std::collections::HashMap::new();
    for i in 0..n {
        let mut u = big_update(n, i, next);
        u.computed_unix_ms = 2_000;
        if i < 2 {
            u.rows[0].reason = "switched: the path in use lost a link or a relay".into();
            moved.insert(topology::SiteId::new(u.site.clone()).unwrap());
        }
        all.insert(topology::SiteId::new(u.site.clone()).unwrap(), u);
    }
    let next_encoded: std::collections::HashMap<_, _> = all
        .iter()
        .map(|(s, u)| (s.clone(), proto::wire::EncodedRouteUpdate::encode_shared(u)))
        .collect();
    let started = Instant::now();
    let written = e
        .publish(
            &fence,
            &Default::default(),
            None,
            None,
            next,
            2_000,
            &next_encoded,
            Some(&moved),
        )
        .await
        .unwrap();
    println!("a table moving 2 of {n} sites written in {:?}", started.elapsed());
    assert_eq!(written, 2);
    let read = e
        .read_published(Some(id), &mut cache)
        .await
        .unwrap()
        .expect("the next table, whole");
    assert_eq!(read.id, next);
    assert_eq!(read.updates.len(), n);
    for (site, u) in &read.updates {
        assert_eq!(**u, all[site], "{site}: as the leader holds it");
        assert_eq!(read.encoded[site], next_encoded[site]);
    }
    // A reader that starts afresh reads the same.
    let fresh = e
        .read_published(None, &mut controller::ha::SiteCache::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fresh.updates, read.updates);

    // A site removed from the inventory under an earlier leadership leaves its key behind:
    // left out, and the table is still served.
    let mut client = etcd_client::Client::connect([etcd.url.as_str()], None)
        .await
        .unwrap();
    let mut gone = big_update(n, 0, next);
    gone.site = "gone-site".into();
    gone.version = Some(pb::TableVersion {
        epoch: 0,
        version: 99,
    });
    client
        .put(
            "/axon/table/sites/gone-site",
            proto::wire::EncodedRouteUpdate::encode_shared(&gone).to_vec(),
            None,
        )
        .await
        .unwrap();
    let served = e
        .read_published(None, &mut controller::ha::SiteCache::default())
        .await
        .unwrap()
        .expect("whole despite the leftover key");
    assert_eq!(served.updates.len(), n);

    // A leader cut off after writing a site of the next table, before its id: not whole.
    let cut = topology::TableId {
        version: topology::Version(9),
        ..id
    };
    let one: std::collections::HashSet<_> = moved.iter().take(1).cloned().collect();
    let partial: std::collections::HashMap<_, _> = all
        .iter()
        .filter(|(s, _)| one.contains(*s))
        .map(|(s, u)| {
            let mut u = u.clone();
            u.version = Some(pb::TableVersion {
                epoch: cut.epoch.0,
                version: cut.version.0,
            });
            (s.clone(), proto::wire::EncodedRouteUpdate::encode_shared(&u))
        })
        .collect();
    for (site, bytes) in &partial {
        client
            .put(format!("/axon/table/sites/{site}"), bytes.to_vec(), None)
            .await
            .unwrap();
    }
    assert!(
        e.read_published(None, &mut controller::ha::SiteCache::default())
            .await
            .unwrap()
            .is_none(),
        "a site newer than the table's id"
    );
}
