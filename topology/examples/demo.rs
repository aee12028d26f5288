//! A tour of the routing engine on a real measured matrix: which pairs a relay improves, what
//! a failure does, what a region drain would cost, and a guardrail at work.
//!
//! `cargo run --release -p axon-topology --example demo -- [DATA_DIR]` (default `data/aws-2025`).

#![allow(clippy::unwrap_used)] // a demo: a failure to read the bundled data is a panic with its message

use std::time::Instant;

use topology::data::world_from_csv;
use topology::{
    Change, DrainOrigin, DrainRequest, DrainTarget, EngineConfig, Epoch, GuardrailConfig, LinkHealth,
    RouteEngine, SiteId, Version, what_if,
};

fn names(p: &[SiteId]) -> String {
    p.iter()
        .map(|s| s.as_str().trim_start_matches("aws-").trim_start_matches("az-"))
        .collect::<Vec<_>>()
        .join(" → ")
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| format!("{}/../data/aws-2025", env!("CARGO_MANIFEST_DIR")));
    let read =
        |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap_or_else(|e| panic!("{dir}/{f}: {e}"));
    let mut world = world_from_csv("sites.csv", &read("sites.csv"), "rtt.csv", &read("rtt.csv")).unwrap();
    let n = world.inventory.len();
    println!("Axon routing engine — {n} sites from {dir}\n");

    let mut engine = RouteEngine::new(EngineConfig::default(), Epoch(1), Version(1)).unwrap();
    let t = Instant::now();
    let table = engine.compute(&world, 0).table;
    println!(
        "full computation (primaries, disjoint backups, hysteresis): {:.2} ms\n",
        t.elapsed().as_secs_f64() * 1e3
    );

    // Pairs where a relay wins, largest gain first.
    let mut gains = Vec::new();
    for a in world.inventory.sites() {
        for b in world.inventory.sites() {
            if let Ok(Some(e)) = table.entry(&a.id, &b.id)
                && e.primary.len() > 2
            {
                let direct = world.links.get(
                    world.inventory.index_of(&a.id).unwrap(),
                    world.inventory.index_of(&b.id).unwrap(),
                );
                let direct_rtt = direct.map_or(f64::INFINITY, |v| v.metrics.rtt_ms);
                gains.push((direct_rtt - e.primary_quality.rtt_ms, direct_rtt, e));
            }
        }
    }
    gains.sort_by(|x, y| y.0.total_cmp(&x.0));
    let only_relay = gains.iter().filter(|g| !g.1.is_finite()).count();
    gains.retain(|g| g.1.is_finite());
    if only_relay > 0 {
        println!(
            "{only_relay} ordered pairs have no direct link in the data and are reached through a relay."
        );
    }
    println!(
        "{} of {} ordered pairs are better through a relay; the largest gains:",
        gains.len(),
        n * (n - 1)
    );
    for (gain, direct, e) in gains.iter().take(8) {
        println!(
            "  {:<42} {:6.1} ms via relay vs {:6.1} ms direct (-{:4.1} ms), MOS {:.2}",
            names(&e.primary),
            e.primary_quality.rtt_ms,
            direct,
            gain,
            e.primary_quality.mos
        );
    }

    // Explain one pair, then break its primary.
    let Some((_, _, pick)) = gains.first() else { return };
    let (src, dst) = (pick.src.clone(), pick.dst.clone());
    println!("\nexplain {src} → {dst}:");
    println!(
        "  primary {:<40} cost {:6.1}  MOS {:.2}  ({:?})",
        names(&pick.primary),
        pick.primary_cost,
        pick.primary_quality.mos,
        pick.reason
    );
    if let (Some(b), Some(c), Some(q)) = (&pick.backup, pick.backup_cost, pick.backup_quality) {
        println!(
            "  backup  {:<40} cost {:6.1}  MOS {:.2}  (disjoint: {})",
            names(b),
            c,
            q.mos,
            pick.backup_disjoint
        );
    }
    let (r, last) = (&pick.primary[1], &pick.primary[2]);
    println!("\nthe link {} → {} goes down:", r, last);
    let m = world
        .links
        .get(
            world.inventory.index_of(r).unwrap(),
            world.inventory.index_of(last).unwrap(),
        )
        .unwrap()
        .metrics;
    world.set_link(r, last, m, LinkHealth::Down).unwrap();
    let t = Instant::now();
    let next = engine.compute(&world, 1_000);
    let e = next.table.entry(&src, &dst).unwrap().unwrap();
    println!(
        "  in the same computation ({:.2} ms, table {}): {} ({:?}), {} pairs changed",
        t.elapsed().as_secs_f64() * 1e3,
        next.table.id(),
        names(&e.primary),
        e.reason,
        table.diff(&next.table).primary_changes()
    );
    world.set_link(r, last, m, LinkHealth::Up).unwrap();

    // What would draining the region that relays most cost?
    let mut relays_by_region = std::collections::BTreeMap::new();
    for (_, _, e) in &gains {
        for r in &e.primary[1..e.primary.len() - 1] {
            *relays_by_region
                .entry(world.inventory.get(r).unwrap().region.clone())
                .or_insert(0) += 1;
        }
    }
    let Some(region) = relays_by_region
        .iter()
        .max_by_key(|(_, c)| **c)
        .map(|(r, _)| r.clone())
    else {
        return;
    };
    let guard = GuardrailConfig::default();
    let report = what_if(
        &world,
        engine.config(),
        &guard,
        &[Change::DrainRegion {
            region: region.clone(),
        }],
    )
    .unwrap();
    let mean = |v: &[topology::whatif::PairDelta]| {
        v.iter()
            .map(|d| f64::from(d.cost_after - d.cost_before))
            .sum::<f64>()
            / v.len().max(1) as f64
    };
    println!(
        "\nwhat-if drain region {region} (the busiest relay region): {} pairs worse (mean +{:.1} ms of cost), {} better, capacity {} → {} sessions",
        report.worse.len(),
        mean(&report.worse),
        report.better.len(),
        report.capacity_before,
        report.capacity_after
    );
    for w in &report.guardrail_warnings {
        println!("  warning: {w}");
    }

    // A guardrail at work: the only site of a region cannot be drained on its own.
    let lonely = world
        .inventory
        .sites()
        .iter()
        .find(|s| {
            world
                .inventory
                .sites()
                .iter()
                .filter(|o| o.region == s.region)
                .count()
                == 1
        })
        .map(|s| s.id.clone());
    if let Some(site) = lonely {
        let req = DrainRequest {
            target: DrainTarget::Site(site),
            reason: "demo".into(),
            author: "demo".into(),
            at_ms: 0,
            origin: DrainOrigin::Operator,
            force: false,
            until_ms: None,
        };
        let healthy = vec![true; n];
        match world.drains.drain(&world.inventory, &healthy, &guard, req) {
            Err(e) => println!("\naxonctl drain site …: {e}"),
            Ok(_) => println!("\n(the drain passed)"),
        }
    }
}
