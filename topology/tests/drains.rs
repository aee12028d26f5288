//! Every guardrail, with its message; the automatic policy's modes, cooldown and auto-undrain.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use topology::drain::{AutoAction, SiteHealth};
use topology::{
    AutoDrainConfig, AutoDrainPolicy, AutoMode, DrainOrigin, DrainRequest, DrainSet, DrainTarget, Guardrail,
    GuardrailConfig, Inventory, LinkHealth, LinkMetrics, RegionId, Site, SiteId, TopologyError, World,
    site_health,
};

/// Three regions: us (2 sites), eu (2 sites), ap (1 site); capacity 100 each.
fn inventory() -> Inventory {
    let s = |id: &str, region: &str| Site::new(id, region, "aws", 0.0, 0.0, 100).unwrap();
    Inventory::new(vec![
        s("us1", "us"),
        s("us2", "us"),
        s("eu1", "eu"),
        s("eu2", "eu"),
        s("ap1", "ap"),
    ])
    .unwrap()
}

fn req(target: DrainTarget) -> DrainRequest {
    DrainRequest {
        target,
        reason: "maintenance".into(),
        author: "alice".into(),
        at_ms: 1_000,
        origin: DrainOrigin::Operator,
        force: false,
        until_ms: None,
    }
}

fn site(id: &str) -> DrainTarget {
    DrainTarget::Site(SiteId::new(id).unwrap())
}

fn region(id: &str) -> DrainTarget {
    DrainTarget::Region(RegionId::new(id).unwrap())
}

fn loose() -> GuardrailConfig {
    GuardrailConfig {
        min_active_regions: 1,
        max_drained_fraction: 1.0,
    }
}

#[test]
fn a_drain_is_recorded_with_author_reason_time_and_origin() {
    let inv = inventory();
    let mut set = DrainSet::default();
    let impact = set.drain(&inv, &[true; 5], &loose(), req(site("us1"))).unwrap();
    assert_eq!(impact.sites, vec![SiteId::new("us1").unwrap()]);
    assert_eq!((impact.capacity_drained_after, impact.capacity_total), (100, 500));
    let d = &set.list()[0];
    assert_eq!(
        (d.author.as_str(), d.reason.as_str(), d.at_ms, d.origin, d.forced),
        ("alice", "maintenance", 1_000, DrainOrigin::Operator, false)
    );
    assert_eq!(set.drained_mask(&inv), vec![true, false, false, false, false]);
}

#[test]
fn the_last_healthy_site_of_a_region_is_refused_unless_forced() {
    let inv = inventory();
    let mut set = DrainSet::default();
    set.drain(&inv, &[true; 5], &loose(), req(site("us1"))).unwrap();
    let err = set
        .drain(&inv, &[true; 5], &loose(), req(site("us2")))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused by guardrail `last_healthy_site_in_region`: us2 is the last healthy site of region us; drain \
         the region explicitly or use --force"
    );
    // A sick other site does not count as healthy: ap1 alone in its region, eu2 sick.
    let healthy = [true, true, true, false, true];
    let err = DrainSet::default()
        .check(&inv, &healthy, &loose(), &req(site("eu1")))
        .unwrap_err();
    assert!(matches!(
        err,
        TopologyError::GuardrailRefused {
            rule: Guardrail::LastHealthySiteInRegion,
            ..
        }
    ));
    // Draining a sick site is allowed even when it is alone: it is not healthy.
    DrainSet::default()
        .check(&inv, &healthy, &loose(), &req(site("eu2")))
        .unwrap();
    // Forced, it passes and the override is recorded.
    let mut forced = req(site("us2"));
    forced.force = true;
    let impact = set.drain(&inv, &[true; 5], &loose(), forced).unwrap();
    assert_eq!(impact.overridden, vec![Guardrail::LastHealthySiteInRegion]);
    assert!(set.list()[1].forced);
}

#[test]
fn a_region_drain_is_explicit_and_not_held_by_the_last_site_rule() {
    let inv = inventory();
    let mut set = DrainSet::default();
    let impact = set.drain(&inv, &[true; 5], &loose(), req(region("ap"))).unwrap();
    assert_eq!(impact.sites, vec![SiteId::new("ap1").unwrap()]);
    assert_eq!(impact.active_regions_after, 2);
}

#[test]
fn min_active_regions_is_enforced() {
    let inv = inventory();
    let cfg = GuardrailConfig {
        min_active_regions: 2,
        max_drained_fraction: 1.0,
    };
    let mut set = DrainSet::default();
    set.drain(&inv, &[true; 5], &cfg, req(region("ap"))).unwrap();
    let err = set.drain(&inv, &[true; 5], &cfg, req(region("eu"))).unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused by guardrail `min_active_regions`: draining region eu would leave 1 active region(s); at least 2 \
         must stay"
    );
}

#[test]
fn max_drained_fraction_is_enforced() {
    let inv = inventory();
    let cfg = GuardrailConfig {
        min_active_regions: 1,
        max_drained_fraction: 0.3,
    };
    let mut set = DrainSet::default();
    set.drain(&inv, &[true; 5], &cfg, req(site("us1"))).unwrap(); // 20%
    let err = set.drain(&inv, &[true; 5], &cfg, req(site("eu1"))).unwrap_err(); // would be 40%
    assert_eq!(
        err.to_string(),
        "refused by guardrail `max_drained_fraction`: draining site eu1 would drain 40% of capacity (200 of 500 \
         sessions); the limit is 30%"
    );
}

#[test]
fn automation_never_forces_and_bad_requests_are_refused() {
    let inv = inventory();
    let set = DrainSet::default();
    let mut r = req(site("us1"));
    r.origin = DrainOrigin::Automatic;
    r.force = true;
    let err = set.check(&inv, &[true; 5], &loose(), &r).unwrap_err();
    assert!(matches!(
        err,
        TopologyError::GuardrailRefused {
            rule: Guardrail::AutomationNeverForces,
            ..
        }
    ));
    let mut r = req(site("us1"));
    r.reason = "  ".into();
    assert!(matches!(
        set.check(&inv, &[true; 5], &loose(), &r),
        Err(TopologyError::InvalidValue { field: "reason", .. })
    ));
    assert!(matches!(
        set.check(&inv, &[true; 5], &loose(), &req(site("nope"))),
        Err(TopologyError::UnknownSite(_))
    ));
    assert!(matches!(
        set.check(&inv, &[true; 5], &loose(), &req(region("mars"))),
        Err(TopologyError::UnknownRegion(_))
    ));
}

#[test]
fn double_drains_and_undrains_of_nothing_are_refused() {
    let inv = inventory();
    let mut set = DrainSet::default();
    set.drain(&inv, &[true; 5], &loose(), req(site("us1"))).unwrap();
    assert_eq!(
        set.drain(&inv, &[true; 5], &loose(), req(site("us1")))
            .unwrap_err(),
        TopologyError::AlreadyDrained("site us1".into())
    );
    let d = set.undrain(&site("us1")).unwrap();
    assert_eq!(d.author, "alice");
    assert_eq!(
        set.undrain(&site("us1")).unwrap_err(),
        TopologyError::NotDrained("site us1".into())
    );
}

/// A mesh where `sick` has every link down and the rest are up.
fn world_with_sick(sick: &str) -> World {
    let mut w = World::new(inventory());
    let ids: Vec<SiteId> = w.inventory.sites().iter().map(|s| s.id.clone()).collect();
    for a in &ids {
        for b in &ids {
            if a != b {
                let h = if a.as_str() == sick || b.as_str() == sick {
                    LinkHealth::Down
                } else {
                    LinkHealth::Up
                };
                w.set_link(a, b, LinkMetrics::rtt(20.0), h).unwrap();
            }
        }
    }
    w
}

#[test]
fn a_site_with_most_links_bad_is_sick_and_its_peers_are_not() {
    let w = world_with_sick("eu1");
    let h = site_health(&w.inventory, &w.links, &AutoDrainConfig::default());
    assert_eq!(
        h[2],
        SiteHealth {
            peers: 4,
            bad_peers: 4,
            sick: true
        }
    );
    assert!(
        h.iter()
            .enumerate()
            .all(|(i, s)| i == 2 || (!s.sick && s.bad_peers == 1))
    );
}

#[test]
fn a_mesh_bad_everywhere_is_no_one_sites_fault() {
    let mut w = world_with_sick("eu1");
    let ids: Vec<SiteId> = w.inventory.sites().iter().map(|s| s.id.clone()).collect();
    // Every link degraded at once: each site has all its peers bad, and none is judged sick.
    for a in &ids {
        for b in &ids {
            if a != b {
                w.set_link(a, b, LinkMetrics::rtt(20.0), LinkHealth::Degraded)
                    .unwrap();
            }
        }
    }
    let h = site_health(&w.inventory, &w.links, &AutoDrainConfig::default());
    assert!(h.iter().all(|s| s.bad_peers == 4 && !s.sick), "{h:?}");
    // Nor does such a site count as healthy: a drain the policy made before stays.
    let cfg = AutoDrainConfig {
        mode: AutoMode::Enforce,
        undrain_after_ms: 1_000,
        ..Default::default()
    };
    let mut set = DrainSet::default();
    let mut policy = AutoDrainPolicy::default();
    let sick_eu1 = site_health(
        &world_with_sick("eu1").inventory,
        &world_with_sick("eu1").links,
        &cfg,
    );
    policy.evaluate(&w.inventory, &sick_eu1, &mut set, &cfg, &loose(), 0);
    assert_eq!(set.list().len(), 1);
    for at in [10_000, 20_000] {
        let acts = policy.evaluate(&w.inventory, &h, &mut set, &cfg, &loose(), at);
        assert!(acts.is_empty(), "{acts:?}");
    }
    assert_eq!(set.list().len(), 1);
    // Two sites of five down at once are still theirs: two of five is not more than half.
    let mut w = world_with_sick("eu1");
    for b in &ids {
        if b.as_str() != "us1" {
            let us1 = SiteId::new("us1").unwrap();
            w.set_link(&us1, b, LinkMetrics::rtt(20.0), LinkHealth::Down)
                .unwrap();
            w.set_link(b, &us1, LinkMetrics::rtt(20.0), LinkHealth::Down)
                .unwrap();
        }
    }
    let h = site_health(&w.inventory, &w.links, &AutoDrainConfig::default());
    let sick: Vec<usize> = (0..5).filter(|&i| h[i].sick).collect();
    assert_eq!(sick, [0, 2], "{h:?}");
}

#[test]
fn recommend_mode_changes_nothing_and_enforce_drains_once_per_cooldown() {
    let w = world_with_sick("eu1");
    let cfg = AutoDrainConfig {
        mode: AutoMode::Recommend,
        ..Default::default()
    };
    let guard = loose();
    let mut health = site_health(&w.inventory, &w.links, &cfg);
    let mut set = DrainSet::default();
    let mut policy = AutoDrainPolicy::default();
    let acts = policy.evaluate(&w.inventory, &health, &mut set, &cfg, &guard, 0);
    assert!(matches!(&acts[..], [AutoAction::Recommended { site, .. }] if site.as_str() == "eu1"));
    assert!(set.list().is_empty());

    let cfg = AutoDrainConfig {
        mode: AutoMode::Enforce,
        cooldown_ms: 60_000,
        undrain_after_ms: 120_000,
        ..cfg
    };
    let acts = policy.evaluate(&w.inventory, &health, &mut set, &cfg, &guard, 1_000);
    assert!(matches!(&acts[..], [AutoAction::Drained { site, .. }] if site.as_str() == "eu1"));
    assert_eq!(set.list()[0].origin, DrainOrigin::Automatic);
    assert!(!set.list()[0].forced);

    // Another site falls sick within the cooldown: held, with the rule named.
    health[0].sick = true;
    let acts = policy.evaluate(&w.inventory, &health, &mut set, &cfg, &guard, 30_000);
    assert!(
        matches!(&acts[..], [AutoAction::Held { rule: Guardrail::AutoCooldown, site, .. }] if site.as_str() == "us1")
    );
    // After the cooldown it may drain.
    let acts = policy.evaluate(&w.inventory, &health, &mut set, &cfg, &guard, 62_000);
    assert!(matches!(&acts[..], [AutoAction::Drained { site, .. }] if site.as_str() == "us1"));
}

#[test]
fn automatic_drains_undo_themselves_after_a_healthy_period_but_operator_drains_stay() {
    let w = world_with_sick("eu1");
    let cfg = AutoDrainConfig {
        mode: AutoMode::Enforce,
        cooldown_ms: 0,
        undrain_after_ms: 120_000,
        ..Default::default()
    };
    let guard = loose();
    let sick = site_health(&w.inventory, &w.links, &cfg);
    let mut set = DrainSet::default();
    set.drain(&w.inventory, &[true; 5], &guard, req(region("ap")))
        .unwrap();
    let mut policy = AutoDrainPolicy::default();
    policy.evaluate(&w.inventory, &sick, &mut set, &cfg, &guard, 0);
    assert_eq!(set.list().len(), 2);
    let healed = vec![
        SiteHealth {
            peers: 4,
            bad_peers: 0,
            sick: false
        };
        5
    ];
    assert!(
        policy
            .evaluate(&w.inventory, &healed, &mut set, &cfg, &guard, 10_000)
            .is_empty()
    );
    // Healthy since 10 s; at 129 s not yet, at 130 s the automatic drain goes.
    assert!(
        policy
            .evaluate(&w.inventory, &healed, &mut set, &cfg, &guard, 129_000)
            .is_empty()
    );
    let acts = policy.evaluate(&w.inventory, &healed, &mut set, &cfg, &guard, 130_000);
    assert!(matches!(&acts[..], [AutoAction::Undrained { site }] if site.as_str() == "eu1"));
    assert_eq!(set.list().len(), 1);
    assert_eq!(set.list()[0].target, region("ap"));
}

#[test]
fn automation_is_held_by_guardrails_like_operators() {
    // ap1 is alone in its region: the automatic policy may not take it.
    let w = world_with_sick("ap1");
    let cfg = AutoDrainConfig {
        mode: AutoMode::Enforce,
        ..Default::default()
    };
    let health = site_health(&w.inventory, &w.links, &cfg);
    // Guardrails see ap1 as healthy only if the caller says so; the policy passes its own
    // verdict (sick), so the last-site rule does not hold it, but min_active_regions = 3 does.
    let guard = GuardrailConfig {
        min_active_regions: 3,
        max_drained_fraction: 1.0,
    };
    let mut set = DrainSet::default();
    let acts = AutoDrainPolicy::default().evaluate(&w.inventory, &health, &mut set, &cfg, &guard, 0);
    assert!(
        matches!(
            &acts[..],
            [AutoAction::Held {
                rule: Guardrail::MinActiveRegions,
                ..
            }]
        ),
        "{acts:?}"
    );
    assert!(set.list().is_empty());
}

#[test]
fn a_resumed_policy_keeps_the_cooldown_of_the_drains_it_takes_over() {
    let w = world_with_sick("eu1");
    let cfg = AutoDrainConfig {
        mode: AutoMode::Enforce,
        cooldown_ms: 60_000,
        ..Default::default()
    };
    let guard = loose();
    let mut health = site_health(&w.inventory, &w.links, &cfg);
    let mut set = DrainSet::default();
    let mut policy = AutoDrainPolicy::default();
    policy.evaluate(&w.inventory, &health, &mut set, &cfg, &guard, 10_000);
    assert_eq!(set.list().len(), 1);
    // A new process (a restart, a new leader) takes the drains over: a second sick site
    // within the cooldown of the first drain is held, as it would have been before.
    health[0].sick = true;
    let mut resumed = AutoDrainPolicy::resume(&set);
    let acts = resumed.evaluate(&w.inventory, &health, &mut set, &cfg, &guard, 20_000);
    assert!(
        matches!(
            &acts[..],
            [AutoAction::Held {
                rule: Guardrail::AutoCooldown,
                ..
            }]
        ),
        "{acts:?}"
    );
    // Operator drains do not start a cooldown.
    let mut operator_only = DrainSet::default();
    operator_only
        .drain(&w.inventory, &[true; 5], &guard, req(site("us2")))
        .unwrap();
    let acts = AutoDrainPolicy::resume(&operator_only).evaluate(
        &w.inventory,
        &health,
        &mut operator_only,
        &cfg,
        &guard,
        20_000,
    );
    assert!(
        acts.iter().any(|a| matches!(a, AutoAction::Drained { .. })),
        "{acts:?}"
    );
}

#[test]
fn a_site_judged_on_too_few_peers_does_not_count_as_healthy() {
    let w = world_with_sick("eu1");
    let cfg = AutoDrainConfig {
        mode: AutoMode::Enforce,
        cooldown_ms: 0,
        undrain_after_ms: 60_000,
        ..Default::default()
    };
    let guard = loose();
    let sick = site_health(&w.inventory, &w.links, &cfg);
    let mut set = DrainSet::default();
    let mut policy = AutoDrainPolicy::default();
    policy.evaluate(&w.inventory, &sick, &mut set, &cfg, &guard, 0);
    assert_eq!(set.list().len(), 1);
    // Its links unreported (no verdict either way) for longer than the healthy period: the
    // drain stays.
    let unjudged = vec![
        SiteHealth {
            peers: 0,
            bad_peers: 0,
            sick: false
        };
        5
    ];
    policy.evaluate(&w.inventory, &unjudged, &mut set, &cfg, &guard, 1_000);
    let acts = policy.evaluate(&w.inventory, &unjudged, &mut set, &cfg, &guard, 100_000);
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(set.list().len(), 1);
    // Judged healthy, the period starts then.
    let healed = vec![
        SiteHealth {
            peers: 4,
            bad_peers: 0,
            sick: false
        };
        5
    ];
    policy.evaluate(&w.inventory, &healed, &mut set, &cfg, &guard, 100_000);
    assert_eq!(set.list().len(), 1);
    let acts = policy.evaluate(&w.inventory, &healed, &mut set, &cfg, &guard, 160_000);
    assert!(matches!(&acts[..], [AutoAction::Undrained { .. }]), "{acts:?}");
}

#[test]
fn auto_drain_settings_that_judge_every_site_or_none_are_refused() {
    assert!(AutoDrainConfig::default().validate().is_ok());
    for (cfg, field) in [
        (
            AutoDrainConfig {
                sick_fraction: 1.0,
                ..Default::default()
            },
            "sick_fraction",
        ),
        (
            AutoDrainConfig {
                sick_fraction: -0.1,
                ..Default::default()
            },
            "sick_fraction",
        ),
        (
            AutoDrainConfig {
                min_peers: 0,
                ..Default::default()
            },
            "min_peers",
        ),
    ] {
        match cfg.validate() {
            Err(TopologyError::InvalidValue { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_timed_drain_lifts_itself_when_its_window_ends() {
    let inv = inventory();
    let mut set = DrainSet::default();
    let timed = DrainRequest {
        until_ms: Some(61_000),
        ..req(site("us1"))
    };
    set.drain(&inv, &[true; 5], &loose(), timed).unwrap();
    set.drain(&inv, &[true; 5], &loose(), req(site("eu1"))).unwrap();
    assert_eq!(set.list()[0].until_ms, Some(61_000));
    assert!(set.lift_expired(60_999).is_empty());
    let lifted = set.lift_expired(61_000);
    assert_eq!(lifted.len(), 1);
    assert_eq!(lifted[0].target, site("us1"));
    // The untimed drain stays, whatever the time.
    assert!(set.lift_expired(u64::MAX).is_empty());
    assert_eq!(set.list().len(), 1);
    assert_eq!(set.list()[0].target, site("eu1"));
    // A window that ends before it starts is refused.
    let backwards = DrainRequest {
        until_ms: Some(1_000),
        ..req(site("us2"))
    };
    assert!(matches!(
        set.drain(&inv, &[true; 5], &loose(), backwards),
        Err(TopologyError::InvalidValue { field: "until", .. })
    ));
}

#[test]
fn drain_targets_keep_their_stored_form() {
    for (t, json) in [
        (site("us1"), r#"{"kind":"site","name":"us1"}"#),
        (region("eu"), r#"{"kind":"region","name":"eu"}"#),
        (
            DrainTarget::link(SiteId::new("us2").unwrap(), SiteId::new("eu1").unwrap()),
            r#"{"kind":"link","name":["eu1","us2"]}"#,
        ),
    ] {
        assert_eq!(serde_json::to_string(&t).unwrap(), json);
        assert_eq!(serde_json::from_str::<DrainTarget>(json).unwrap(), t);
    }
}
