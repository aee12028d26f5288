//! The closed loop on loopback: probers measure through the WAN emulator, the controller
//! computes, agents apply; then a link fails, a region is drained and undrained, the control
//! plane goes away and comes back.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::{Duration, Instant};

use mesh::{Mesh, endpoint, eventually, four_sites, relay_rtt as rtt};
use proto::v1 as pb;
use proto::v1::admin_client::AdminClient;

fn counts(r: &pb::RouteSummary) -> (u32, u32, u32, u32) {
    (r.direct, r.relayed, r.unreachable, r.unprotected)
}

fn relays(path: &[String]) -> &[String] {
    &path[1..path.len() - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_relays_reroutes_drains_and_survives_the_control_plane() {
    let mut mesh = Mesh::start(four_sites(), rtt).await;
    let long = Duration::from_secs(60);

    // 1. One relay beats the direct path: a → c → b.
    eventually(long, "agent a to hold a → c → b", || async {
        (mesh.primary("a", "b").await? == ["a", "c", "b"]).then_some(())
    })
    .await;
    eventually(long, "agent b to hold b → c → a", || async {
        (mesh.primary("b", "a").await? == ["b", "c", "a"]).then_some(())
    })
    .await;

    // What if c were drained: a ↔ b lose their relay and get worse; nothing is changed.
    let mut admin = AdminClient::connect(endpoint(mesh.controller.as_ref().unwrap()))
        .await
        .unwrap();
    let w = admin
        .what_if(pb::WhatIfRequest {
            changes: vec!["drain-site c".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(w.pairs_worse >= 2 && w.worst_increase_ms > 5.0, "{w:?}");
    assert!(w.summary.iter().any(|l| l.contains("a → b")), "{w:?}");
    assert!((w.capacity_left - 0.75).abs() < 1e-9, "{w:?}");
    assert_eq!(mesh.primary("a", "b").await.unwrap(), ["a", "c", "b"]);
    // Status counts the mesh as the table routes it: a ↔ b relayed, every other pair direct,
    // each with a backup, once every link is measured and the first noisy estimates (a
    // busy host inflates the first round trips) have settled.
    let mut last = None;
    let settled = tokio::time::timeout(long, async {
        loop {
            if let Ok(s) = admin.clone().status(pb::StatusRequest {}).await {
                let s = s.into_inner();
                if let Some(r) = s.routes.filter(|_| s.links_up == 12) {
                    last = Some(counts(&r));
                    if last == Some((10, 2, 0, 0)) {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "status never counted (direct, relayed, unreachable, unprotected) = (10, 2, 0, 0); last {last:?}"
    );
    // Explain says why: the direct path costs more, and so does the detour through d (once
    // d's links have been measured: the relay through c can be in place before them).
    let e = eventually(long, "explain to list the detour through d", || {
        let mut admin = admin.clone();
        async move {
            let e = admin
                .explain(pb::ExplainRequest {
                    from: "a".into(),
                    to: "b".into(),
                })
                .await
                .ok()?
                .into_inner();
            e.alternatives
                .iter()
                .any(|a| a.path.as_ref().is_some_and(|p| p.sites == ["a", "d", "b"]))
                .then_some(e)
        }
    })
    .await;
    assert_eq!(
        e.chosen.as_ref().unwrap().primary.as_ref().unwrap().sites,
        ["a", "c", "b"]
    );
    let direct = &e.alternatives[0];
    assert_eq!(direct.path.as_ref().unwrap().sites, ["a", "b"]);
    assert!(direct.why_not.contains("more"), "{e:?}");
    assert!(
        e.alternatives
            .iter()
            .any(|a| a.path.as_ref().unwrap().sites == ["a", "d", "b"]),
        "{e:?}"
    );

    // 2. Blackhole a link of that primary: every affected agent moves off it.
    let t0 = Instant::now();
    mesh.blackhole("c", "b", true);
    eventually(Duration::from_secs(30), "agent a to avoid c → b", || async {
        let p = mesh.primary("a", "b").await?;
        (!p.windows(2).any(|w| w[0] == "c" && w[1] == "b")).then_some(())
    })
    .await;
    let took = t0.elapsed();
    println!("blackhole c→b: agent a applied a path avoiding it after {took:?}");
    mesh.blackhole("c", "b", false);
    eventually(long, "a → c → b again after healing", || async {
        (mesh.primary("a", "b").await? == ["a", "c", "b"]).then_some(())
    })
    .await;
    // The journal tells the story: a → b left c → b for a path without it, and came back.
    let mut admin = AdminClient::connect(endpoint(mesh.controller.as_ref().unwrap()))
        .await
        .unwrap();
    let journal = admin
        .changes(pb::ChangesRequest {
            site: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ab: Vec<&pb::RouteChange> = journal
        .changes
        .iter()
        .filter(|c| c.src == "a" && c.dst == "b")
        .collect();
    let back = ab.first().expect("a → b's return in the journal");
    assert_eq!(back.after, ["a", "c", "b"], "{journal:?}");
    let off = ab
        .iter()
        .find(|c| c.before == ["a", "c", "b"])
        .expect("a → b's move off c → b in the journal");
    assert!(
        !off.after.windows(2).any(|w| w[0] == "c" && w[1] == "b") && !off.after.is_empty(),
        "{off:?}"
    );
    assert!(off.reason.starts_with("switched: "), "{off:?}");
    let version = |c: &pb::RouteChange| c.version.as_ref().map(|v| (v.epoch, v.version));
    assert!(version(off) < version(back), "newest first: {journal:?}");
    assert!(
        off.at_unix_ms <= back.at_unix_ms && off.cost_before_ms.is_some(),
        "{off:?}"
    );
    assert!(
        journal
            .changes
            .iter()
            .all(|c| c.src == "c" || c.dst == "c" || c.before.iter().chain(&c.after).any(|s| s == "c")),
        "only pairs c ends or relays: {journal:?}"
    );
    // Explain shows the pair's own history, newest first.
    let history = admin
        .explain(pb::ExplainRequest {
            from: "a".into(),
            to: "b".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .history;
    assert!(history.len() >= 2, "{history:?}");
    assert!(
        history
            .iter()
            .all(|c| (c.src.as_str(), c.dst.as_str()) == ("a", "b")),
        "{history:?}"
    );
    assert_eq!(history[0], **back);
    assert!(history.iter().any(|c| c == *off), "{history:?}");
    let unknown = admin
        .changes(pb::ChangesRequest {
            site: "zz".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    // 3. Drain region r3 (c and d): their agents turn unready, nothing relays through them.
    let mut admin = AdminClient::connect(endpoint(mesh.controller.as_ref().unwrap()))
        .await
        .unwrap();
    let reply = admin
        .drain(pb::DrainRequest {
            kind: "region".into(),
            name: "r3".into(),
            reason: "maintenance".into(),
            author: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.refused.is_empty(), "{reply:?}");
    let mut drained = reply.sites.clone();
    drained.sort();
    assert_eq!(drained, ["c", "d"]);
    for site in ["c", "d"] {
        eventually(long, "drained agents to answer readyz 503", || async {
            (mesh.agent_get(site, "/readyz").await.0 == 503).then_some(())
        })
        .await;
    }
    assert_eq!(mesh.agent_get("a", "/readyz").await.0, 200);
    // With c and d unable to relay, every one of these pairs goes direct (a pair may pass
    // through the other undrained site for a moment while a busy host inflates a link's
    // measurements: it ends there).
    for (from, to) in [("a", "b"), ("b", "a"), ("a", "d"), ("b", "c")] {
        eventually(long, "a direct path once c and d may not relay", || async {
            let p = mesh.primary(from, to).await?;
            relays(&p).is_empty().then_some(())
        })
        .await;
    }
    let (_, drain_state) = mesh.agent_get("c", "/v1/drain").await;
    assert_eq!(drain_state["site_drained"], true);
    let listed = admin
        .drains(pb::DrainsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .drains;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].kind.as_str(),
            listed[0].name.as_str(),
            listed[0].author.as_str()
        ),
        ("region", "r3", "test")
    );
    // The last healthy site of a region is refused, with the rule named. (Every attempt is
    // refused: with r3 drained, a would take the drained capacity past its limit too. The
    // region rule comes first once the controller holds a healthy, which a host loaded by
    // other tests may briefly deny it.)
    let mut last = None;
    let named = tokio::time::timeout(long, async {
        loop {
            let reply = admin
                .drain(pb::DrainRequest {
                    kind: "site".into(),
                    name: "a".into(),
                    reason: "x".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(!reply.refused.is_empty(), "a drained: {reply:?}");
            if reply.refused.contains("last_healthy_site_in_region") {
                return;
            }
            last = Some(reply.refused);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        named.is_ok(),
        "never refused as the last healthy site of r1: {last:?}"
    );
    // Undrain restores.
    admin
        .undrain(pb::UndrainRequest {
            kind: "region".into(),
            name: "r3".into(),
            author: "test".into(),
        })
        .await
        .unwrap();
    eventually(long, "c ready again", || async {
        (mesh.agent_get("c", "/readyz").await.0 == 200).then_some(())
    })
    .await;
    eventually(long, "a → c → b after the undrain", || async {
        (mesh.primary("a", "b").await? == ["a", "c", "b"]).then_some(())
    })
    .await;

    // A link drain (a provider's maintenance on c ↔ a, named either way round): every path
    // leaves the link while it is still measured up, no site turns unready, and the undrain
    // brings the relay back.
    let reply = admin
        .drain(pb::DrainRequest {
            kind: "link".into(),
            name: "c<->a".into(),
            reason: "provider maintenance".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.refused.is_empty() && reply.sites.is_empty(), "{reply:?}");
    for (from, to) in [("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")] {
        let p = eventually(long, "paths off the drained link", || async {
            let p = mesh.primary(from, to).await?;
            (!p.windows(2)
                .any(|w| (w[0] == "a" && w[1] == "c") || (w[0] == "c" && w[1] == "a")))
            .then_some(p)
        })
        .await;
        assert!(p.len() >= 2, "{from}→{to}: {p:?}");
    }
    for site in ["a", "b", "c", "d"] {
        assert_eq!(mesh.agent_get(site, "/readyz").await.0, 200, "{site}");
    }
    let (_, drain_state) = mesh.agent_get("b", "/v1/drain").await;
    assert_eq!(drain_state["drains"][0]["kind"], "link", "{drain_state}");
    assert_eq!(drain_state["drains"][0]["name"], "a<->c", "{drain_state}");
    let why = admin
        .explain(pb::ExplainRequest {
            from: "a".into(),
            to: "c".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        why.alternatives
            .iter()
            .any(|alt| alt.why_not == "link a → c is drained"),
        "{why:?}"
    );
    let links = admin.links(pb::LinksRequest {}).await.unwrap().into_inner();
    assert!(
        links
            .links
            .iter()
            .any(|l| l.from == "a" && l.to == "c" && l.rtt_p50_ms > 0.0),
        "still measured: {links:?}"
    );
    admin
        .undrain(pb::UndrainRequest {
            kind: "link".into(),
            name: "a<->c".into(),
            author: "test".into(),
        })
        .await
        .unwrap();
    eventually(long, "a → c → b after the link's undrain", || async {
        (mesh.primary("a", "b").await? == ["a", "c", "b"]).then_some(())
    })
    .await;
    // A link drain that would cut pairs off is refused unless forced: with a's links to c
    // and d cut, a reaches the mesh through b alone.
    mesh.blackhole("a", "c", true);
    mesh.blackhole("a", "d", true);
    eventually(long, "c → a and d → a down at the controller", || async {
        let links = admin
            .clone()
            .links(pb::LinksRequest {})
            .await
            .ok()?
            .into_inner()
            .links;
        let down = |from: &str| {
            links
                .iter()
                .any(|l| l.from == from && l.to == "a" && l.health == "down")
        };
        (down("c") && down("d")).then_some(())
    })
    .await;
    let reply = admin
        .drain(pb::DrainRequest {
            kind: "link".into(),
            name: "a<->b".into(),
            reason: "provider maintenance".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        reply.refused.contains("without a path") && reply.refused.contains("b → a"),
        "{reply:?}"
    );
    let after = admin
        .drains(pb::DrainsRequest {
            history: true,
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(after.drains.is_empty(), "{after:?}");
    assert_eq!(after.history[0].action, "refused", "{after:?}");
    mesh.blackhole("a", "c", false);
    mesh.blackhole("a", "d", false);
    eventually(long, "a → c → b once a's links are back", || async {
        (mesh.primary("a", "b").await? == ["a", "c", "b"]).then_some(())
    })
    .await;

    // 4. The controller goes away; a restarted agent serves its last-known-good table (the
    // one it held when the controller stopped: nothing newer can reach it after).
    mesh.controller.take().unwrap().shutdown().await;
    // A table already on the wire may still land: read the version once the agent has seen
    // its stream end, when nothing more can reach it.
    let before = eventually(long, "agent a sees the controller gone", || async {
        let (_, v) = mesh.agent_get("a", "/v1/routes").await;
        (v["controller_connected"] == false).then(|| v["version"].as_u64().unwrap())
    })
    .await;
    let old = mesh.agents.remove("a").unwrap();
    old.shutdown().await;
    // Nothing listens on the discard port: no controller answers.
    let cfg = mesh::agent_config(mesh.dir.path(), "a", vec!["http://127.0.0.1:9".into()]);
    let restarted = agent::start(cfg).await.unwrap();
    let (status, v) = mesh::http_get(restarted.http_addr, "/v1/routes/b").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["source"], "last-known-good");
    assert_eq!(v["version"].as_u64().unwrap(), before);
    assert!(v["age_seconds"].as_f64().unwrap() >= 0.0);
    restarted.shutdown().await;

    // 5. The controller restarts from its snapshot: versions continue, never go backwards.
    let mut cfg = mesh.controller_cfg.clone();
    cfg.grpc_listen = "127.0.0.1:0".parse().unwrap();
    let c = controller::start(cfg).await.unwrap();
    let status = AdminClient::connect(endpoint(&c))
        .await
        .unwrap()
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let v = status.table.unwrap();
    assert!(
        v.version > before,
        "restarted at version {} after {before}",
        v.version
    );
    // The journal's file brings the history back: the move off c → b is still there.
    let kept = AdminClient::connect(endpoint(&c))
        .await
        .unwrap()
        .changes(pb::ChangesRequest {
            site: "c".into(),
            limit: 1_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(kept.changes.contains(*off), "{off:?} in {kept:?}");
    mesh.controller = Some(c);
    mesh.shutdown().await;
}

/// The store refuses a write (its directory replaced by a file, as a failed disk would refuse
/// it): the table is
/// not published, the failure is counted, and once the store takes writes again the same
/// table goes out without waiting for another change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_the_store_refused_is_published_once_the_store_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let snapshot = state.join("controller.json");
    let c = controller::start(mesh::controller_config(&four_sites(), Some(snapshot.clone())))
        .await
        .unwrap();
    let mut admin = AdminClient::connect(endpoint(&c)).await.unwrap();
    let version = async |admin: &mut AdminClient<tonic::transport::Channel>| {
        let s = admin.status(pb::StatusRequest {}).await.unwrap().into_inner();
        s.table.map(|t| (t.epoch, t.version))
    };
    let before = version(&mut admin).await.expect("a first table");

    std::fs::remove_dir_all(&state).unwrap();
    std::fs::write(&state, "not a directory").unwrap();
    let refused = admin
        .drain(pb::DrainRequest {
            kind: "region".into(),
            name: "r3".into(),
            reason: "maintenance".into(),
            ..Default::default()
        })
        .await;
    let e = refused.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("in force on this controller")
            && e.message()
                .contains("published as soon as the store takes writes"),
        "{e:?}"
    );
    let failures = c
        .shared
        .metrics
        .publish_failures
        .with_label_values(&["store"])
        .get();
    assert!(failures >= 1, "{failures} store failures counted");
    assert_eq!(version(&mut admin).await, Some(before), "nothing published");

    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    eventually(Duration::from_secs(30), "the drain's table published", || async {
        let mut admin = AdminClient::connect(endpoint(&c)).await.ok()?;
        (version(&mut admin).await? > before).then_some(())
    })
    .await;
    let saved = std::fs::read_to_string(&snapshot).unwrap();
    assert!(saved.contains("maintenance"), "{saved}");
    c.shutdown().await;
}

/// A site whose links all fail at once is the site's problem, not its links': the controller
/// on `auto_drain.mode = enforce` drains it by itself (its agent turns unready, the others keep
/// their paths), says so in `axonctl status` and its metrics, and lifts the drain once the
/// site's links have stayed healthy for `undrain_after_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_loses_every_link_is_drained_by_the_policy_and_undrained_once_healthy() {
    let mesh = Mesh::start_controlled(four_sites(), rtt, |c| {
        c.auto_drain = topology::AutoDrainConfig {
            mode: topology::AutoMode::Enforce,
            cooldown_ms: 0,
            undrain_after_ms: 3_000,
            ..Default::default()
        };
    })
    .await;
    let long = Duration::from_secs(60);
    let controller = mesh.controller.as_ref().unwrap();
    let mut admin = AdminClient::connect(endpoint(controller)).await.unwrap();
    eventually(long, "agent a to hold a → c → b", || async {
        (mesh.primary("a", "b").await? == ["a", "c", "b"]).then_some(())
    })
    .await;
    assert_eq!(mesh.agent_get("d", "/readyz").await.0, 200);

    // d is cut off from every peer; its agent still reaches the controller.
    for peer in ["a", "b", "c"] {
        mesh.blackhole("d", peer, true);
    }
    eventually(long, "d's agent to turn unready", || async {
        (mesh.agent_get("d", "/readyz").await.0 == 503).then_some(())
    })
    .await;
    let status = admin.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.auto_drain_mode, "enforce");
    let sick: Vec<(&str, &str)> = status
        .sick_sites
        .iter()
        .map(|k| (k.site.as_str(), k.verdict.as_str()))
        .collect();
    assert_eq!(sick, [("d", "drained")], "{status:?}");
    let sites = admin.sites(pb::SitesRequest {}).await.unwrap().into_inner().sites;
    let flagged: Vec<&str> = sites.iter().filter(|s| s.sick).map(|s| s.id.as_str()).collect();
    assert_eq!(flagged, ["d"], "{sites:?}");
    // Sick once more than half its peers are bad: two or three of three.
    assert!(status.sick_sites[0].bad_peers >= 2, "{status:?}");
    let drains = admin
        .drains(pb::DrainsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .drains;
    assert_eq!(drains.len(), 1, "{drains:?}");
    assert_eq!(
        (drains[0].name.as_str(), drains[0].origin.as_str()),
        ("d", "auto")
    );
    assert!(
        drains[0].reason.contains("of 3 peers down or degraded"),
        "{drains:?}"
    );
    let events = |e: &str| {
        controller
            .shared
            .metrics
            .auto_drain_events
            .with_label_values(&[e])
            .get()
    };
    assert_eq!(events("drained"), 1);
    for site in ["a", "b", "c"] {
        assert_eq!(mesh.agent_get(site, "/readyz").await.0, 200, "{site}");
    }
    assert_eq!(mesh.primary("a", "b").await.unwrap(), ["a", "c", "b"]);

    // The outage outlasts d's probing connections (closed after their idle timeout), so
    // that the heal is not followed by the late close of a connection the cut left open.
    eventually(long, "d's probing connections to time out", || async {
        (mesh.probers["d"].open_connections() == 0).then_some(())
    })
    .await;
    // Healed: judged healthy again, and after the healthy period the drain is lifted.
    for peer in ["a", "b", "c"] {
        mesh.blackhole("d", peer, false);
    }
    eventually(long, "d's agent to turn ready again", || async {
        (mesh.agent_get("d", "/readyz").await.0 == 200).then_some(())
    })
    .await;
    let drains = admin
        .drains(pb::DrainsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .drains;
    assert!(drains.is_empty(), "{drains:?}");
    assert!(events("recovered") >= 1);
    assert_eq!(events("undrained"), 1);
    let log = admin
        .drains(pb::DrainsRequest {
            history: true,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .history;
    let acts: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|e| (e.action.as_str(), e.name.as_str(), e.origin.as_str()))
        .collect();
    assert_eq!(
        acts,
        [("undrained", "d", "auto"), ("drained", "d", "auto")],
        "{log:?}"
    );
    let status = admin.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert!(status.sick_sites.is_empty(), "{status:?}");
    mesh.shutdown().await;
}

/// A link's round trip grows without moving any path: the table is published again for its
/// costs, and the agents serve the new cost and voice quality rather than the old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn costs_that_drift_while_the_paths_stand_reach_the_agents() {
    // The usual mesh, but with d nearer b (70 ms) than a (90 ms): with d 80 ms from both, the
    // backups d → a → c and d → b → c tie, and a → c's drift would settle the tie, moving a
    // backup, so that the new costs could come with a table published for its paths.
    let drift_rtt = |x: &str, y: &str| match if x < y { (x, y) } else { (y, x) } {
        ("a", "d") => 90,
        ("b", "d") => 70,
        pair => mesh::relay_rtt(pair.0, pair.1),
    };
    let mesh = Mesh::start(four_sites(), drift_rtt).await;
    let long = Duration::from_secs(60);
    let route = async |from: &str, to: &str| {
        let (status, v) = mesh.agent_get(from, &format!("/v1/routes/{to}")).await;
        (status == 200).then(|| v["route"].clone())
    };
    let row = async |from: &str, to: &str| Some(route(from, to).await?["primary"].clone());
    // Every link measured: d's backup towards c goes through b.
    eventually(long, "d → c backed up through b", || async {
        let r = route("d", "c").await?;
        (r["backup"]["sites"] == serde_json::json!(["d", "b", "c"])).then_some(())
    })
    .await;
    // a → c is direct, 20 ms of round trip; a → b goes through c.
    let before = eventually(long, "a → c direct at its measured cost", || async {
        let p = row("a", "c").await?;
        (p["sites"] == serde_json::json!(["a", "c"]) && p["cost_ms"].as_f64()? < 15.0).then_some(p)
    })
    .await;
    eventually(long, "a → c → b", || async {
        (mesh.primary("a", "b").await? == ["a", "c", "b"]).then_some(())
    })
    .await;
    let c = mesh.controller.as_ref().unwrap();
    let refreshes = || {
        c.shared
            .metrics
            .tables_published
            .with_label_values(&["costs"])
            .get()
    };
    let refreshed = refreshes();
    // 20 → 50 ms: a → c's cost goes up 15 ms; still the best path, and still the relay of a → b
    // (35 ms of cost against 50 direct).
    mesh.set_delay("a", "c", Duration::from_millis(25));
    let after = eventually(long, "agent a to serve a → c's new cost", || async {
        let p = row("a", "c").await?;
        (p["cost_ms"].as_f64()? > before["cost_ms"].as_f64()? + 12.0).then_some(p)
    })
    .await;
    assert_eq!(after["sites"], serde_json::json!(["a", "c"]), "{after}");
    assert!(
        after["mos"].as_f64().unwrap() <= before["mos"].as_f64().unwrap(),
        "{before} then {after}"
    );
    assert_eq!(mesh.primary("a", "b").await.unwrap(), ["a", "c", "b"]);
    let backup = route("d", "c").await.unwrap()["backup"]["sites"].clone();
    assert_eq!(backup, serde_json::json!(["d", "b", "c"]));
    assert!(refreshes() > refreshed, "published for its costs");
    mesh.shutdown().await;
}
