//! The engine over time: hysteresis at the table level, versions, diffs, per-site tables,
//! drained and shadow sites.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use topology::hysteresis::SwitchReason;
use topology::{
    DrainOrigin, DrainRequest, DrainTarget, EngineConfig, Epoch, GuardrailConfig, Inventory, LinkHealth,
    LinkMetrics, Reason, Role, RouteEngine, Site, SiteId, Version, World,
};

fn id(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}

/// a, b, c, d in two regions. Direct a→b is 100 ms RTT; via c it is 60 + 36 = 96 ms (a relay
/// wins by 2 ms of cost before the penalty: not enough to beat the 2 ms penalty plus margin).
fn world(ab_rtt: f64) -> World {
    let s = |id: &str, region: &str| Site::new(id, region, "aws", 0.0, 0.0, 100).unwrap();
    let inv = Inventory::new(vec![s("a", "r1"), s("b", "r2"), s("c", "r1"), s("d", "r2")]).unwrap();
    let mut w = World::new(inv);
    let rtt = |x: &str, y: &str| match (x.min(y), x.max(y)) {
        ("a", "b") => ab_rtt,
        ("a", "c") => 60.0,
        ("b", "c") => 36.0,
        ("a", "d") => 80.0,
        ("b", "d") => 70.0,
        _ => 50.0,
    };
    for x in ["a", "b", "c", "d"] {
        for y in ["a", "b", "c", "d"] {
            if x != y {
                w.set_link(&id(x), &id(y), LinkMetrics::rtt(rtt(x, y)), LinkHealth::Up)
                    .unwrap();
            }
        }
    }
    w
}

fn engine() -> RouteEngine {
    RouteEngine::new(EngineConfig::default(), Epoch(7), Version(1)).unwrap()
}

fn primary(e: &RouteEngine, from: &str, to: &str) -> Vec<String> {
    let t = e.last().unwrap();
    t.entry(&id(from), &id(to))
        .unwrap()
        .unwrap()
        .primary
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn versions_move_only_when_a_path_changes() {
    let mut e = engine();
    let w = world(100.0);
    let first = e.compute(&w, 1_000);
    assert!(first.changed);
    assert_eq!(
        (first.table.id().epoch, first.table.id().version),
        (Epoch(7), Version(1))
    );
    for t in 2..10 {
        let c = e.compute(&w, t * 1_000);
        assert!(!c.changed);
        assert_eq!(c.table.id(), first.table.id());
    }
}

#[test]
fn a_backup_that_moves_alone_is_a_new_version() {
    let mut e = engine();
    let mut w = world(100.0);
    let first = e.compute(&w, 1_000);
    let before = first.table.entry(&id("a"), &id("b")).unwrap().unwrap();
    assert_eq!(before.primary, vec![id("a"), id("b")]);
    assert_eq!(before.backup, Some(vec![id("a"), id("c"), id("b")]));
    // c→b slows down: a→c→b is no backup any more, while c→b's own pair waits out the
    // hysteresis before it leaves its direct link, so no primary moves in this computation.
    w.set_link(&id("c"), &id("b"), LinkMetrics::rtt(200.0), LinkHealth::Up)
        .unwrap();
    let c = e.compute(&w, 2_000);
    let cb = c.table.entry(&id("c"), &id("b")).unwrap().unwrap();
    assert_eq!(cb.primary, vec![id("c"), id("b")]);
    assert!(matches!(cb.reason, Reason::Kept { .. }), "{:?}", cb.reason);
    assert!(c.changed, "a backup moved: agents must get the new one");
    let after = c.table.entry(&id("a"), &id("b")).unwrap().unwrap();
    assert_eq!(after.primary, before.primary);
    assert_ne!(after.backup, before.backup);
}

#[test]
fn a_primary_that_moves_alone_is_a_new_version() {
    // The engine tells a new table from its memory of every pair's primary and backup: a
    // computation where only primaries move must still publish.
    type Rows = Vec<(Option<Vec<SiteId>>, Option<Vec<SiteId>>)>;
    let rows = |t: &topology::RouteTable| -> Rows {
        let ids = ["a", "b", "c", "d"];
        let mut v = Vec::new();
        for x in ids {
            for y in ids.iter().filter(|&&y| y != x) {
                let e = t.entry(&id(x), &id(y)).unwrap();
                v.push((e.as_ref().map(|e| e.primary.clone()), e.and_then(|e| e.backup)));
            }
        }
        v
    };
    let mut e = engine();
    let mut w = world(100.0);
    let mut last = rows(&e.compute(&w, 0).table);
    // Both relays come to beat direct a→b (cost 50 ms): a→c→b costs 40, a→d→b 36. The pair
    // moves to d once it has won three computations; its backup stays on c throughout (a
    // backup is kept while the new one is not better by the switching margin, 5 ms).
    for (x, y, rtt) in [("a", "c", 40.0), ("a", "d", 34.0), ("d", "b", 34.0)] {
        w.set_link(&id(x), &id(y), LinkMetrics::rtt(rtt), LinkHealth::Up)
            .unwrap();
        w.set_link(&id(y), &id(x), LinkMetrics::rtt(rtt), LinkHealth::Up)
            .unwrap();
    }
    let mut primaries_alone = 0;
    // Past the warm-up (10 s), when the margins are in force.
    for t in 11..18 {
        let c = e.compute(&w, t * 1_000);
        let now = rows(&c.table);
        let primaries = now.iter().zip(&last).any(|(n, l)| n.0 != l.0);
        let backups = now.iter().zip(&last).any(|(n, l)| n.1 != l.1);
        // Costs move too: a table for them alone moves no path.
        assert_eq!(c.changed, primaries || backups || c.costs_only, "computation {t}");
        assert!(!(c.costs_only && (primaries || backups)), "computation {t}");
        primaries_alone += usize::from(primaries && !backups);
        last = now;
    }
    assert_eq!(primary(&e, "a", "b"), ["a", "d", "b"]);
    assert!(
        primaries_alone > 0,
        "no computation moved primaries alone: the test shows nothing"
    );
}

#[test]
fn noise_within_the_margin_never_moves_a_route() {
    let mut e = engine();
    e.compute(&world(100.0), 0);
    let before = primary(&e, "a", "b");
    let mut x = 7u64;
    for t in 1..=2_000 {
        // ±3% RTT noise on the direct link, every computation.
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let noise = ((x >> 40) as f64 / (1u64 << 24) as f64 - 0.5) * 6.0;
        let c = e.compute(&world(100.0 + noise), t * 1_000);
        assert!(!c.changed, "computation {t} published a new version on noise");
    }
    assert_eq!(primary(&e, "a", "b"), before);
}

#[test]
fn a_down_primary_is_left_in_the_same_computation() {
    let mut e = engine();
    let mut w = world(100.0);
    e.compute(&w, 0);
    assert_eq!(primary(&e, "a", "b"), ["a", "b"]);
    w.set_link(&id("a"), &id("b"), LinkMetrics::rtt(100.0), LinkHealth::Down)
        .unwrap();
    let c = e.compute(&w, 1_000);
    assert!(c.changed);
    let entry = c.table.entry(&id("a"), &id("b")).unwrap().unwrap();
    assert_ne!(entry.primary, vec![id("a"), id("b")]);
    assert_eq!(entry.reason, Reason::Switched(SwitchReason::CurrentDown));
    // The table diff names the pair and why.
    let diff = e.last().map(|t| t.id()).unwrap();
    assert_eq!(diff.version, Version(2));
}

#[test]
fn a_clear_win_takes_over_after_switch_after_computations() {
    let mut e = engine();
    e.compute(&world(100.0), 0);
    assert_eq!(primary(&e, "a", "b"), ["a", "b"]);
    // The direct link slows to 140 ms: via c (96 ms) now wins by far more than the margin.
    let slow = world(140.0);
    for t in 1..=2 {
        e.compute(&slow, t * 1_000);
        assert_eq!(
            primary(&e, "a", "b"),
            ["a", "b"],
            "switched after {t} computation(s)"
        );
        // The candidate's winning streak lives in the engine's memory (for `explain`).
        let mem = e.hysteresis().get(0, 1).unwrap();
        assert_eq!(
            (mem.pending, mem.streak),
            (topology::Path::new(&[0, 2, 1]), t as u16)
        );
    }
    let c = e.compute(&slow, 3_000);
    assert_eq!(primary(&e, "a", "b"), ["a", "c", "b"]);
    let entry = c.table.entry(&id("a"), &id("b")).unwrap().unwrap();
    assert!(matches!(
        entry.reason,
        Reason::Switched(SwitchReason::Better { after: 3, .. })
    ));
}

#[test]
fn a_small_gain_that_holds_takes_over_after_patient_after_computations() {
    let mut e = engine();
    e.compute(&world(100.0), 0);
    assert_eq!(primary(&e, "a", "b"), ["a", "b"]);
    // Past the warm-up, the direct link is 4% slower than the way via c (52 against 50 ms of
    // cost): under the 5 ms switching margin, over the 2% patient one.
    let slower = world(104.0);
    let patient_after = EngineConfig::default().hysteresis.patient_after;
    for i in 1..patient_after {
        let c = e.compute(&slower, 20_000 + u64::from(i) * 1_000);
        assert!(!c.changed, "moved after {i} computations");
        let mem = e.hysteresis().get(0, 1).unwrap();
        assert_eq!(
            (mem.pending, mem.streak, mem.patience),
            (topology::Path::new(&[0, 2, 1]), 0, i as u16)
        );
    }
    let c = e.compute(&slower, 20_000 + u64::from(patient_after) * 1_000);
    assert!(c.changed);
    assert_eq!(primary(&e, "a", "b"), ["a", "c", "b"]);
    let entry = c.table.entry(&id("a"), &id("b")).unwrap().unwrap();
    assert!(
        matches!(entry.reason, Reason::Switched(SwitchReason::Patient { after, .. }) if after == patient_after),
        "{:?}",
        entry.reason
    );
}

#[test]
fn diffs_and_site_tables_speak_in_site_names() {
    let mut e = engine();
    let mut w = world(100.0);
    let t1 = e.compute(&w, 0).table;
    for (x, y) in [("a", "b"), ("b", "a")] {
        w.set_link(&id(x), &id(y), LinkMetrics::rtt(100.0), LinkHealth::Down)
            .unwrap();
    }
    let t2 = e.compute(&w, 1_000).table;
    let diff = t1.diff(&t2);
    let ab = diff
        .changes
        .iter()
        .find(|c| c.src == id("a") && c.dst == id("b"))
        .unwrap();
    assert!(ab.primary_changed());
    assert_eq!(ab.primary_before.as_deref(), Some(&[id("a"), id("b")][..]));
    assert!(diff.primary_changes() >= 1);
    assert!(t2.diff(&t2).is_empty());

    // The journal's bounded account agrees with the diff: every change counted, the newest
    // named, in the same order.
    let primaries: Vec<_> = diff
        .changes
        .iter()
        .filter(|c| c.primary_changed())
        .cloned()
        .collect();
    assert!(primaries.len() >= 2, "{diff:?}");
    let all = t1.primary_changes(&t2, usize::MAX);
    assert_eq!(all.changes, primaries);
    assert_eq!(all.total, primaries.len());
    assert_eq!(all.backup_only, diff.changes.len() - primaries.len());
    let last = t1.primary_changes(&t2, 1);
    assert_eq!((last.total, last.backup_only), (all.total, all.backup_only));
    assert_eq!(last.changes, primaries[primaries.len() - 1..]);
    assert!(t1.primary_changes(&t2, 0).changes.is_empty());
    assert_eq!(t2.primary_changes(&t2, 10).total, 0);

    let st = t2.site_table(&id("a")).unwrap();
    assert_eq!(st.id, t2.id());
    assert_eq!(st.rows.len(), 3);
    let row = st.rows.iter().find(|r| r.dst == id("b")).unwrap();
    assert!(row.primary_quality.mos > 3.5 && row.primary_quality.mos <= 4.5);
    assert!(row.backup.is_some());
    assert!(t2.site_table(&id("zz")).is_err());
}

#[test]
fn drained_sites_keep_their_rows_but_never_relay_and_shadow_sites_have_none() {
    let mut w = world(140.0);
    let guard = GuardrailConfig {
        min_active_regions: 1,
        max_drained_fraction: 1.0,
    };
    let req = DrainRequest {
        target: DrainTarget::Site(id("c")),
        reason: "maintenance".into(),
        author: "ops".into(),
        at_ms: 0,
        origin: DrainOrigin::Operator,
        force: true,
        until_ms: None,
    };
    let healthy = vec![true; 4];
    w.drains.drain(&w.inventory, &healthy, &guard, req).unwrap();
    let mut e = engine();
    let t = e.compute(&w, 0).table;
    for a in ["a", "b", "c", "d"] {
        for b in ["a", "b", "c", "d"] {
            if a == b {
                continue;
            }
            let entry = t.entry(&id(a), &id(b)).unwrap().unwrap();
            let relays = &entry.primary[1..entry.primary.len() - 1];
            assert!(
                !relays.contains(&id("c")),
                "{a}->{b} relays through drained c: {:?}",
                entry.primary
            );
            if let Some(bk) = &entry.backup {
                assert!(!bk[1..bk.len() - 1].contains(&id("c")));
            }
        }
    }
    // A shadow site is measured but neither an endpoint nor a relay.
    let mut inv_sites = w.inventory.sites().to_vec();
    inv_sites[3].role = Role::Shadow;
    let mut w2 = World::new(Inventory::new(inv_sites).unwrap());
    w2.links = w.links.clone();
    let t = engine().compute(&w2, 0).table;
    assert!(t.entry(&id("a"), &id("d")).unwrap().is_none());
    assert!(t.entry(&id("d"), &id("a")).unwrap().is_none());
    let ab = t.entry(&id("a"), &id("b")).unwrap().unwrap();
    assert!(!ab.primary.contains(&id("d")) && !ab.backup.unwrap().contains(&id("d")));
}

#[test]
fn a_first_choice_is_revisited_on_a_small_gain_during_the_warm_up_and_held_after_it() {
    // Direct a→b at 98 ms RTT beats the relay through c (60 + 36 ms plus the relay penalty);
    // at 106 ms the relay wins by about 3 ms of cost: below the 5 ms margin, above the
    // warm-up's 1 ms.
    let mut e = engine();
    e.compute(&world(98.0), 0);
    assert_eq!(primary(&e, "a", "b"), ["a", "b"]);
    for t in 1..=3 {
        e.compute(&world(106.0), t * 1_000);
    }
    assert_eq!(
        primary(&e, "a", "b"),
        ["a", "c", "b"],
        "not revisited in the warm-up"
    );

    let mut e = engine();
    e.compute(&world(98.0), 0);
    for t in 1..=10 {
        e.compute(&world(106.0), 10_000 + t * 1_000);
    }
    assert_eq!(
        primary(&e, "a", "b"),
        ["a", "b"],
        "a small gain moved a route after the warm-up"
    );
}

/// Long-haul round trips: a→b direct, or through c in 200 + 112 = 312 ms (through d, 450).
fn long_haul(ab_rtt: f64) -> World {
    let mut w = world(ab_rtt);
    for (x, y, rtt) in [
        ("a", "c", 200.0),
        ("b", "c", 112.0),
        ("a", "d", 250.0),
        ("b", "d", 200.0),
    ] {
        w.set_link(&id(x), &id(y), LinkMetrics::rtt(rtt), LinkHealth::Up)
            .unwrap();
        w.set_link(&id(y), &id(x), LinkMetrics::rtt(rtt), LinkHealth::Up)
            .unwrap();
    }
    w
}

#[test]
fn a_pair_over_the_voice_round_trip_moves_to_a_relay_under_it_within_the_margin() {
    let run = |cfg: EngineConfig| {
        let mut e = RouteEngine::new(cfg, Epoch(1), Version(1)).unwrap();
        // 300 ms direct: cheaper than the relay (150 against 158 ms of cost).
        e.compute(&long_haul(300.0), 0);
        assert_eq!(primary(&e, "a", "b"), ["a", "b"]);
        // Direct grows to 330 ms: the relay is 7 ms cheaper, inside the 8.25 ms margin of a
        // gain in delay, but only the relay keeps the round trip under 320 ms.
        for t in 1..=5 {
            e.compute(&long_haul(330.0), 20_000 + t * 1_000);
        }
        let t = e.last().unwrap();
        (
            primary(&e, "a", "b"),
            t.entry(&id("a"), &id("b")).unwrap().unwrap().reason,
        )
    };
    let (path, reason) = run(EngineConfig::default());
    assert_eq!(path, ["a", "c", "b"]);
    assert!(
        matches!(
            reason,
            Reason::Switched(SwitchReason::MeetsVoice { after: 3, .. })
        ),
        "{reason:?}"
    );
    let mut cost_only = EngineConfig::default();
    cost_only.hysteresis.voice.enabled = false;
    // (The table then never changes, so its reasons are those of the first computation.)
    let (path, _) = run(cost_only);
    assert_eq!(path, ["a", "b"]);
}

#[test]
fn a_relay_under_the_voice_round_trip_is_preferred_to_a_slightly_cheaper_direct_path_over_it() {
    // Direct 322 ms (161 ms of cost); through c 312 ms, but its links' 1.5 ms of jitter bring it
    // to 164 ms of cost: 1.9% dearer, inside the 5% voice slack.
    let w = long_haul_jitter(322.0);
    let mut e = engine();
    e.compute(&w, 0);
    let entry = e.last().unwrap().entry(&id("a"), &id("b")).unwrap().unwrap();
    assert_eq!(primary(&e, "a", "b"), ["a", "c", "b"]);
    assert!(
        matches!(entry.reason, Reason::MeetsVoice { cheapest_cost } if (cheapest_cost - 161.0).abs() < 0.01),
        "{:?}",
        entry.reason
    );
    assert!(
        entry.primary_quality.rtt_ms <= 320.0,
        "{:?}",
        entry.primary_quality
    );
    // Cost alone takes the direct path; so does a relay dearer than the slack.
    let mut cost_only = EngineConfig::default();
    cost_only.hysteresis.voice.enabled = false;
    let mut e = RouteEngine::new(cost_only, Epoch(1), Version(1)).unwrap();
    e.compute(&w, 0);
    assert_eq!(primary(&e, "a", "b"), ["a", "b"]);
    // Direct at 315 ms (157.5 of cost) is 4% cheaper than the relay, and under 320 ms anyway.
    let mut e = engine();
    e.compute(&long_haul_jitter(315.0), 0);
    assert_eq!(primary(&e, "a", "b"), ["a", "b"]);
    // Direct at 325 ms breaks the threshold, but the relay is 5.2% dearer (162.5 against 171).
    let mut w = long_haul_jitter(325.0);
    let m = LinkMetrics {
        jitter_ms: 5.0,
        ..LinkMetrics::rtt(200.0)
    };
    w.set_link(&id("a"), &id("c"), m, LinkHealth::Up).unwrap();
    let mut e = engine();
    e.compute(&w, 0);
    assert_eq!(primary(&e, "a", "b"), ["a", "b"]);
}

/// [`long_haul`] with 1.5 ms of jitter on the links through c.
fn long_haul_jitter(ab_rtt: f64) -> World {
    let mut w = long_haul(ab_rtt);
    for (x, y, rtt) in [("a", "c", 200.0), ("b", "c", 112.0)] {
        let m = LinkMetrics {
            jitter_ms: 1.5,
            ..LinkMetrics::rtt(rtt)
        };
        w.set_link(&id(x), &id(y), m, LinkHealth::Up).unwrap();
        w.set_link(&id(y), &id(x), m, LinkHealth::Up).unwrap();
    }
    w
}

#[test]
fn a_table_summary_counts_routes_protection_and_switches() {
    let mut e = engine();
    let mut w = world(100.0);
    let all = w.endpoint_mask();
    let s = e.compute(&w, 0).table.summary(&all);
    // Twelve ordered pairs, all direct, each with a disjoint backup; nothing switched yet.
    assert_eq!(
        (s.direct, s.one_relay, s.two_relays, s.unreachable),
        (12, 0, 0, 0)
    );
    assert_eq!((s.backup_disjoint, s.backup_partial, s.backup_none), (12, 0, 0));
    assert!(s.switched.iter().all(|&(_, n)| n == 0), "{:?}", s.switched);
    assert_eq!(s.switched.len(), SwitchReason::LABELS.len());

    // a→b goes down: that one pair leaves it at once, through a relay.
    w.set_link(&id("a"), &id("b"), LinkMetrics::rtt(100.0), LinkHealth::Down)
        .unwrap();
    let s = e.compute(&w, 1_000).table.summary(&all);
    assert_eq!((s.direct, s.one_relay + s.two_relays, s.unreachable), (11, 1, 0));
    let down = s.switched.iter().find(|(l, _)| *l == "current_down").unwrap();
    assert_eq!(down.1, 1, "{:?}", s.switched);
    assert_eq!(s.switched.iter().map(|&(_, n)| n).sum::<usize>(), 1);

    // d loses every link: its six pairs have no path; the others lose d as a way round.
    for x in ["a", "b", "c"] {
        w.set_link(&id(x), &id("d"), LinkMetrics::rtt(80.0), LinkHealth::Down)
            .unwrap();
        w.set_link(&id("d"), &id(x), LinkMetrics::rtt(80.0), LinkHealth::Down)
            .unwrap();
    }
    let t = e.compute(&w, 2_000).table;
    let h = w.links.health_counts();
    assert_eq!((h.up, h.down, h.degraded, h.stale, h.unmeasured), (5, 7, 0, 0, 0));
    let s = t.summary(&all);
    assert_eq!(s.unreachable, 6);
    assert_eq!(s.direct + s.one_relay + s.two_relays, 6);
    assert_eq!(s.backup_disjoint + s.backup_partial + s.backup_none, 6);
    // a→b, on its relay through c, has no other way left (its direct link and d are down).
    assert!(s.backup_none >= 1, "{s:?}");
    // The switches of the previous table are not counted again.
    assert_eq!(
        s.switched.iter().map(|&(_, n)| n).sum::<usize>(),
        0,
        "{:?}",
        s.switched
    );

    // Only endpoints count: without d in the mask, none of its pairs is reported.
    let mut no_d = all.clone();
    no_d[3] = false;
    let s = t.summary(&no_d);
    assert_eq!((s.unreachable, s.direct + s.one_relay + s.two_relays), (0, 6));
}

#[test]
fn a_new_configuration_keeps_the_paths_and_publishes_its_costs() {
    // a→b on its relay through c (direct 140 ms): new weights keep it there, in a new version.
    let mut e = engine();
    let w = world(140.0);
    let first = e.compute(&w, 0);
    assert_eq!(primary(&e, "a", "b"), ["a", "c", "b"]);
    let mut cfg = e.config().clone();
    cfg.hysteresis.switch_after += 3;
    cfg.cost.relay_penalty_ms += 1.0;
    assert!(!e.reconfigure(cfg).unwrap(), "the switching memory is kept");
    let next = e.compute(&w, 1_000);
    assert!(next.changed, "the new costs are published");
    assert_eq!(next.table.id().version.0, first.table.id().version.0 + 1);
    assert_eq!(primary(&e, "a", "b"), ["a", "c", "b"]);
    let entry = next.table.entry(&id("a"), &id("b")).unwrap().unwrap();
    let before = first.table.entry(&id("a"), &id("b")).unwrap().unwrap();
    assert!(
        entry.primary_cost > before.primary_cost,
        "{} vs {}",
        entry.primary_cost,
        before.primary_cost
    );
    // No relays allowed: the memory starts afresh and a→b goes direct at once.
    let mut direct = e.config().clone();
    direct.paths.max_relays = 0;
    assert!(e.reconfigure(direct).unwrap());
    e.compute(&w, 2_000);
    assert_eq!(primary(&e, "a", "b"), ["a", "b"]);
    // A configuration the engine would refuse at start is refused here too.
    let mut bad = e.config().clone();
    bad.paths.max_relays = 3;
    assert!(e.reconfigure(bad).is_err());
    assert_eq!(e.config().paths.max_relays, 0);
}

#[test]
fn a_drained_link_is_left_at_once_by_every_path_and_taken_back_after_the_undrain() {
    let mut e = engine();
    let mut w = world(120.0);
    e.compute(&w, 1_000);
    assert_eq!(primary(&e, "a", "b"), ["a", "c", "b"]);
    let req = DrainRequest {
        target: DrainTarget::link(id("c"), id("a")),
        reason: "provider maintenance".into(),
        author: "ops".into(),
        at_ms: 1_500,
        origin: DrainOrigin::Operator,
        force: false,
        until_ms: None,
    };
    // The ends are kept in order, so either naming is the same drain; it drains no site and
    // no guardrail holds it, even the tightest.
    assert_eq!(req.target, DrainTarget::link(id("a"), id("c")));
    assert_eq!(req.target.to_string(), "link a<->c");
    let tight = GuardrailConfig {
        min_active_regions: 2,
        max_drained_fraction: 0.0,
    };
    let impact = w.drains.drain(&w.inventory, &[true; 4], &tight, req).unwrap();
    assert!(impact.sites.is_empty() && impact.overridden.is_empty());
    assert_eq!(w.drains.drained_mask(&w.inventory), [false; 4]);
    let t = e.compute(&w, 2_000);
    assert!(t.changed);
    for (x, y) in [("a", "b"), ("b", "a"), ("a", "c"), ("c", "a"), ("d", "c")] {
        let p = primary(&e, x, y);
        assert!(
            !p.windows(2)
                .any(|l| (l[0] == "a" && l[1] == "c") || (l[0] == "c" && l[1] == "a")),
            "{x}→{y} {p:?}"
        );
    }
    assert_eq!(
        primary(&e, "a", "b"),
        ["a", "b"],
        "at once, not after the switching streak"
    );
    assert_eq!(
        primary(&e, "a", "c").len(),
        3,
        "a relay, the direct link being drained"
    );
    // The measured link stays as it was: only routing leaves it.
    assert_eq!(
        w.links.get(0, 2).unwrap().health,
        LinkHealth::Up,
        "still measured up"
    );
    w.drains.undrain(&DrainTarget::link(id("a"), id("c"))).unwrap();
    for at in [3_000, 4_000, 5_000, 6_000] {
        e.compute(&w, at);
    }
    assert_eq!(primary(&e, "a", "b"), ["a", "c", "b"]);
    // Bad links: to itself, ends out of order, an unknown end.
    let bad = |target| DrainRequest {
        target,
        reason: "x".into(),
        author: "ops".into(),
        at_ms: 1,
        origin: DrainOrigin::Operator,
        force: false,
        until_ms: None,
    };
    for t in [
        DrainTarget::link(id("a"), id("a")),
        DrainTarget::Link(id("c"), id("a")),
        DrainTarget::link(id("a"), id("zz")),
    ] {
        assert!(
            w.drains
                .check(&w.inventory, &[true; 4], &tight, &bad(t.clone()))
                .is_err(),
            "{t}"
        );
    }
}

/// Three sites, x–y `xy` ms of round trip, z 200 ms from both: every pair's primary is direct
/// and its backup the one relay, whatever `xy` is up to 200.
fn triangle(xy: f64) -> World {
    let s = |id: &str| Site::new(id, "r1", "aws", 0.0, 0.0, 100).unwrap();
    let mut w = World::new(Inventory::new(vec![s("x"), s("y"), s("z")]).unwrap());
    for (a, b) in [
        ("x", "y"),
        ("y", "x"),
        ("x", "z"),
        ("z", "x"),
        ("y", "z"),
        ("z", "y"),
    ] {
        let rtt = if a == "z" || b == "z" { 200.0 } else { xy };
        w.set_link(&id(a), &id(b), LinkMetrics::rtt(rtt), LinkHealth::Up)
            .unwrap();
    }
    w
}

fn cost(c: &topology::Computation, from: &str, to: &str) -> f32 {
    c.table.entry(&id(from), &id(to)).unwrap().unwrap().primary_cost
}

#[test]
fn a_cost_that_drifts_while_its_path_stands_is_published_once() {
    let mut e = engine();
    let first = e.compute(&triangle(50.0), 0);
    // +5 ms of round trip, 2.5 ms of cost: under the margin, no new version.
    let small = e.compute(&triangle(55.0), 1_000);
    assert!(!small.changed);
    assert_eq!(cost(&small, "x", "y"), cost(&first, "x", "y"));
    // +30 ms: the path stands, its cost went up 15 ms, 60%: a new version with the new cost,
    // said to be for costs only.
    let drifted = e.compute(&triangle(80.0), 2_000);
    assert!(
        drifted.changed && drifted.costs_only,
        "{:?} {:?}",
        (drifted.changed, drifted.costs_only),
        drifted.table.diff(&first.table)
    );
    assert_eq!(primary(&e, "x", "y"), ["x", "y"]);
    assert_eq!(drifted.table.id().version, Version(2));
    assert!(
        cost(&drifted, "x", "y") >= cost(&first, "x", "y") + 14.0,
        "{} then {}",
        cost(&first, "x", "y"),
        cost(&drifted, "x", "y")
    );
    // Measured against the table in force: once published, the same cost is no drift.
    let again = e.compute(&triangle(80.0), 3_000);
    assert!(!again.changed);
    // A path change is no refresh.
    let mut w = triangle(80.0);
    w.set_link(&id("x"), &id("y"), LinkMetrics::rtt(80.0), LinkHealth::Down)
        .unwrap();
    let moved = e.compute(&w, 4_000);
    assert!(moved.changed && !moved.costs_only);

    // Off, only paths publish.
    let mut cfg = EngineConfig::default();
    cfg.refresh.enabled = false;
    let mut off = RouteEngine::new(cfg, Epoch(7), Version(1)).unwrap();
    off.compute(&triangle(50.0), 0);
    assert!(!off.compute(&triangle(80.0), 1_000).changed);
}

#[test]
fn refresh_margins_are_checked_and_drift_is_judged_on_both() {
    let r = topology::RefreshConfig::default();
    assert!(!r.drifted(100.0, 109.0), "9%: noise");
    assert!(!r.drifted(50.0, 59.0), "18% but 9 ms");
    assert!(r.drifted(100.0, 111.0));
    assert!(r.drifted(100.0, 89.0), "down as well as up");
    assert!(r.drifted(100.0, f64::INFINITY), "out of reach");
    assert!(!r.drifted(f64::INFINITY, f64::INFINITY));
    let bad = topology::RefreshConfig {
        ratio: -0.1,
        ..r.clone()
    };
    let cfg = EngineConfig {
        refresh: bad,
        ..Default::default()
    };
    let e = RouteEngine::new(cfg, Epoch(1), Version(1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("refresh.ratio"), "{e}");
}
