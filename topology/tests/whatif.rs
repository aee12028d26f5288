//! What-if: a change set applied to a copy of the world, reported as a diff.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use topology::data::world_from_csv;
use topology::{
    Change, EngineConfig, GuardrailConfig, LinkMetrics, RegionId, Role, Site, SiteId, World, what_if,
};

fn aws() -> World {
    let dir = format!("{}/../data/aws-2025", env!("CARGO_MANIFEST_DIR"));
    let sites = std::fs::read_to_string(format!("{dir}/sites.csv")).unwrap();
    let rtt = std::fs::read_to_string(format!("{dir}/rtt.csv")).unwrap();
    world_from_csv("sites.csv", &sites, "rtt.csv", &rtt).unwrap()
}

fn id(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}

#[test]
fn the_same_world_changes_nothing() {
    let w = aws();
    let r = what_if(&w, &EngineConfig::default(), &GuardrailConfig::default(), &[]).unwrap();
    assert_eq!(r.pairs_compared, 32 * 31);
    assert_eq!(r.unchanged, r.pairs_compared);
    assert!(r.better.is_empty() && r.worse.is_empty() && r.lost.is_empty());
    assert_eq!(r.capacity_before, r.capacity_after);
}

#[test]
fn cutting_a_link_makes_its_pair_worse_by_a_measured_amount() {
    let w = aws();
    let (a, b) = (id("aws-us-east-1"), id("aws-eu-west-1"));
    let r = what_if(
        &w,
        &EngineConfig::default(),
        &GuardrailConfig::default(),
        &[Change::CutLink {
            a: a.clone(),
            b: b.clone(),
        }],
    )
    .unwrap();
    let d = r.worse.iter().find(|d| d.src == a && d.dst == b).unwrap();
    assert!(d.cost_after > d.cost_before);
    assert_eq!(d.before, vec![a.clone(), b.clone()]);
    assert!(d.after.len() > 2, "the pair must now relay: {:?}", d.after);
    assert!(d.mos_after <= d.mos_before);
    // Nothing can get better by removing a link.
    assert!(r.better.is_empty());
    // Worst first.
    assert!(
        r.worse
            .windows(2)
            .all(|w| w[0].cost_after - w[0].cost_before >= w[1].cost_after - w[1].cost_before)
    );
}

#[test]
fn draining_a_region_costs_capacity_and_warns_of_guardrails() {
    let w = aws();
    let region = RegionId::new("eu-central").unwrap();
    let guard = GuardrailConfig {
        min_active_regions: 2,
        max_drained_fraction: 0.05,
    };
    let r = what_if(
        &w,
        &EngineConfig::default(),
        &guard,
        &[Change::DrainRegion { region }],
    )
    .unwrap();
    // Three sites of 1000 sessions each leave service.
    assert_eq!(r.capacity_before - r.capacity_after, 3000);
    assert!(
        r.guardrail_warnings
            .iter()
            .any(|w| w.contains("max_drained_fraction")),
        "{:?}",
        r.guardrail_warnings
    );
    // Pairs that relayed through eu-central now pay more; no pair is lost (drained sites keep rows).
    assert!(!r.worse.is_empty());
    assert!(r.lost.is_empty());
}

#[test]
fn adding_a_site_in_the_middle_makes_pairs_better() {
    // Two far sites with a poor direct link; a new site halfway offers a relay.
    let s = |id: &str, lat: f64, lon: f64| Site::new(id, id, "metal", lat, lon, 100).unwrap();
    let mut w =
        World::new(topology::Inventory::new(vec![s("west", 0.0, -40.0), s("east", 0.0, 40.0)]).unwrap());
    w.set_link(
        &id("west"),
        &id("east"),
        LinkMetrics {
            rtt_ms: 150.0,
            loss: 0.02,
            jitter_ms: 5.0,
            loss_se: 0.0,
        },
        topology::LinkHealth::Up,
    )
    .unwrap();
    w.set_link(
        &id("east"),
        &id("west"),
        LinkMetrics {
            rtt_ms: 150.0,
            loss: 0.02,
            jitter_ms: 5.0,
            loss_se: 0.0,
        },
        topology::LinkHealth::Up,
    )
    .unwrap();
    let add = Change::AddSite {
        site: s("mid", 0.0, 0.0),
        links: vec![],
    };
    let r = what_if(&w, &EngineConfig::default(), &GuardrailConfig::default(), &[add]).unwrap();
    assert_eq!(r.better.len(), 2, "{r:?}");
    assert!(
        r.better
            .iter()
            .all(|d| d.after == vec![d.src.clone(), id("mid"), d.dst.clone()])
    );
    assert!(r.better.iter().all(|d| d.mos_after > d.mos_before));
    assert_eq!(r.gained, 4, "mid<->west and mid<->east are new pairs");
}

#[test]
fn promoting_a_shadow_site_gains_pairs_and_refuses_active_sites() {
    let mut w = aws();
    let mut sites = w.inventory.sites().to_vec();
    sites[0].role = Role::Shadow;
    let shadow = sites[0].id.clone();
    w = World {
        inventory: topology::Inventory::new(sites).unwrap(),
        ..w
    };
    let cfg = EngineConfig::default();
    let r = what_if(
        &w,
        &cfg,
        &GuardrailConfig::default(),
        &[Change::PromoteShadow { site: shadow.clone() }],
    )
    .unwrap();
    assert_eq!(r.gained, 2 * 31);
    assert_eq!(r.capacity_after - r.capacity_before, 1000);
    let err = what_if(
        &w,
        &cfg,
        &GuardrailConfig::default(),
        &[Change::PromoteShadow {
            site: id("aws-us-east-1"),
        }],
    );
    assert!(err.is_err());
}
