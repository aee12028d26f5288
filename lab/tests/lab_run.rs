//! Short lab runs: four sites, one blackhole on a relay path, the report complete and
//! consistent; and the same mesh on two controller replicas (a real etcd) whose leader is
//! killed.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

/// Runs `body` (the scenario's `[run]` and `[[fault]]` sections) on the four-site matrix.
async fn run_four_sites(name: &str, body: &str, seed: u64) -> lab::Report {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sites.csv"),
        "id,region,provider,lat,lon\na,r1,aws,0,0\nb,r2,gcp,0,10\nc,r3,azure,0,5\nd,r4,metal,10,5\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rtt.csv"),
        "src,dst,rtt_ms\na,b,100\na,c,20\nb,c,20\na,d,80\nb,d,80\nc,d,80\n",
    )
    .unwrap();
    let path = dir.path().join(format!("{name}.toml"));
    let scenario = format!("name = \"{name}\"\n[data]\nsites = \"sites.csv\"\nrtt = \"rtt.csv\"\n{body}");
    std::fs::write(&path, scenario).unwrap();
    let s = lab::Scenario::load(&path).unwrap();
    lab::run(
        &s,
        &lab::Options {
            seed,
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_is_routed_around_and_the_report_is_complete() {
    let body = r#"
[run]
duration_s = 30
[[fault]]
at_s = 15
duration_s = 5
kind = "blackhole"
target = "c<->b"
"#;
    let r = run_four_sites("ci-4", body, 3).await;

    assert_eq!((r.scenario.as_str(), r.sites, r.faults.len()), ("ci-4", 4, 1));
    let f = &r.faults[0];
    assert!(
        f.affected_pairs >= 2,
        "a → b and its reverse relay through c: {f:?}"
    );
    let detect = f.detect_s.expect("the blackhole was never seen");
    let converge = f.converge_s.expect("the blackhole was never routed around");
    assert!(detect <= converge + 0.2 && converge < 5.0, "{f:?}");
    // Healed at 20 s: the pairs go back to the relay through c.
    let recover = f
        .recover_s
        .expect("the pairs never went back once the blackhole ended");
    assert!(recover < 10.0, "{f:?}");
    // A pair seen off the oracle at a check after the heal is named with its path.
    if let Some(held) = &f.recover_held_by {
        assert!(held.contains(" -> ") && held.contains("the oracle's"), "{held}");
    }
    assert_eq!(r.convergence_s.max, converge);
    assert!(r.route_changes >= 2, "{r:?}");
    assert!(r.rtt_error_ms.p50 < 3.0, "{r:?}");
    assert!(
        r.jitter_error_ms.p50 < 3.0 && r.jitter_error_ms.p99 >= r.jitter_error_ms.p50,
        "{r:?}"
    );
    assert!(
        r.probe_overhead_bps_per_pair > 1_000.0 && r.cpu_seconds > 0.0,
        "{r:?}"
    );
    let q = r.quality;
    assert!(
        (0.0..=1.0).contains(&q.pairs_within_2pct_of_oracle) && q.mean_cost_ratio_vs_oracle >= 0.99,
        "{q:?}"
    );
    // Against the direct path: a ↔ b relay through c, 40 ms of round trip instead of 100, and
    // no other pair gains from a relay (2 of 12 pairs, once transients are left out).
    let d = q.vs_direct;
    assert!((0.1..=0.25).contains(&d.pairs_relayed), "{d:?}");
    assert!((55.0..=65.0).contains(&d.relayed_rtt_saved_ms.p50), "{d:?}");
    assert!(d.mean_rtt_ms < d.mean_direct_rtt_ms, "{d:?}");
    assert!(d.mean_direct_cost_ratio_vs_oracle > 1.1, "{d:?}");

    // The JSON carries every field the report promises.
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    for key in [
        "scenario",
        "sites",
        "duration_s",
        "probe_hz",
        "faults",
        "convergence_s",
        "quality",
        "flaps_per_pair_hour",
        "route_changes",
        "downs_held",
        "rtt_error_ms",
        "jitter_error_ms",
        "loss_error_pp",
        "probe_overhead_bps_per_pair",
        "cpu_seconds",
        "bursts",
    ] {
        assert!(v.get(key).is_some(), "{key} missing");
    }
    for key in [
        "started",
        "heal",
        "refused_slots",
        "refused_host_stall",
        "refused_lossy",
    ] {
        assert!(v["bursts"].get(key).is_some(), "bursts.{key} missing");
    }
    for key in [
        "at_s",
        "kind",
        "target",
        "detect_s",
        "converge_s",
        "affected_pairs",
        "recover_s",
        "recover_held_by",
        "first_drop_s",
        "first_probe_lost_s",
    ] {
        assert!(v["faults"][0].get(key).is_some(), "faults[].{key} missing");
    }
    for key in [
        "mean_cost_ratio_vs_oracle",
        "pairs_within_2pct_of_oracle",
        "poor_pairs",
        "poor_pairs_fixed",
        "vs_direct",
    ] {
        assert!(v["quality"].get(key).is_some(), "quality.{key} missing");
    }
    for key in [
        "pairs_relayed",
        "mean_direct_cost_ratio_vs_oracle",
        "mean_rtt_ms",
        "mean_direct_rtt_ms",
        "relayed_rtt_saved_ms",
    ] {
        assert!(
            v["quality"]["vs_direct"].get(key).is_some(),
            "quality.vs_direct.{key} missing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_every_agent_follows_the_new_epoch() {
    let body = r#"
[run]
duration_s = 20
controllers = 2
[[fault]]
at_s = 5
duration_s = 8
kind = "controller_kill"
"#;
    let r = run_four_sites("ci-4-ha", body, 5).await;
    let f = &r.faults[0];
    assert_eq!(f.kind, "controller_kill");
    // A 3 s lease, then a 3 s warm-up before the new leader's first table.
    let detect = f.detect_s.expect("no new leader was elected");
    let converge = f
        .converge_s
        .expect("the agents never reached the new leader's table");
    assert!(detect <= 6.0 && detect <= converge && converge <= 12.0, "{f:?}");
    assert!(r.rtt_error_ms.p50 < 3.0, "{r:?}");
}
