//! What-if: the same computation on a modified copy of the world, reported as a diff.
//!
//! Both sides are computed fresh (no hysteresis), so the report compares best paths with best
//! paths: "drain sa-east and 14 pairs get worse by 38 ms on average, 22% of capacity is left
//! drained".

use serde::{Deserialize, Serialize};

use crate::cost::{LinkMetrics, Quality};
use crate::drain::{DrainOrigin, DrainRequest, DrainTarget, GuardrailConfig};
use crate::engine::EngineConfig;
use crate::error::TopologyError;
use crate::link::{LinkHealth, LinkView};
use crate::matrix::CostMatrix;
use crate::paths::{Routes, compute_routes};
use crate::site::{Inventory, RegionId, Role, Site, SiteId, SiteIdx};
use crate::world::World;

/// Fibre inflation seen in measured inter-region RTTs: about 1.7× the great-circle bound.
pub const RTT_INFLATION: f64 = 1.7;

/// Estimated RTT between two sites from their distance: light in fibre covers about 200 km
/// per ms, so the bound is `2·d/200` ms; measured paths are about [`RTT_INFLATION`] times that,
/// plus a millisecond of access.
pub fn estimated_rtt_ms(a: &Site, b: &Site) -> f64 {
    RTT_INFLATION * a.distance_km(b) / 100.0 + 1.0
}

/// One modification of the world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Change {
    /// A new site; links not given are estimated from distance ([`estimated_rtt_ms`]).
    AddSite {
        /// The site (its role is taken as given).
        site: Site,
        /// Measured or expected metrics to peers, both directions alike.
        links: Vec<(SiteId, LinkMetrics)>,
    },
    /// A shadow site becomes active.
    PromoteShadow {
        /// The shadow site.
        site: SiteId,
    },
    /// A site drain (guardrails are reported, not enforced).
    DrainSite {
        /// The site.
        site: SiteId,
    },
    /// A region drain.
    DrainRegion {
        /// The region.
        region: RegionId,
    },
    /// A link is cut in both directions.
    CutLink {
        /// One end.
        a: SiteId,
        /// The other end.
        b: SiteId,
    },
    /// A link's metrics change (both directions).
    SetLink {
        /// One end.
        a: SiteId,
        /// The other end.
        b: SiteId,
        /// New metrics.
        metrics: LinkMetrics,
    },
}

/// How one pair's best path changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairDelta {
    /// Ingress.
    pub src: SiteId,
    /// Egress.
    pub dst: SiteId,
    /// Path before.
    pub before: Vec<SiteId>,
    /// Path after.
    pub after: Vec<SiteId>,
    /// Cost before, ms.
    pub cost_before: f32,
    /// Cost after, ms.
    pub cost_after: f32,
    /// MOS before.
    pub mos_before: f64,
    /// MOS after.
    pub mos_after: f64,
}

/// The diff a change set makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhatIfReport {
    /// Pairs routed both before and after.
    pub pairs_compared: usize,
    /// Pairs whose cost drops by more than 0.1 ms, largest gain first.
    pub better: Vec<PairDelta>,
    /// Pairs whose cost rises by more than 0.1 ms, largest loss first.
    pub worse: Vec<PairDelta>,
    /// Pairs within 0.1 ms.
    pub unchanged: usize,
    /// Pairs routed before and unreachable after.
    pub lost: Vec<(SiteId, SiteId)>,
    /// Pairs that exist only after (new or promoted sites), with a route.
    pub gained: usize,
    /// Capacity of active, undrained sites before, sessions.
    pub capacity_before: u64,
    /// The same after.
    pub capacity_after: u64,
    /// Guardrails a drain in the change set would hit (reported, not enforced).
    pub guardrail_warnings: Vec<String>,
}

fn undrained_capacity(world: &World) -> u64 {
    let drained = world.drains.drained_mask(&world.inventory);
    world
        .inventory
        .sites()
        .iter()
        .zip(drained)
        .filter(|(s, d)| s.role == Role::Active && !d)
        .map(|(s, _)| u64::from(s.capacity))
        .sum()
}

/// Applies `changes` to a copy of `world` and reports how the best paths differ.
pub fn what_if(
    world: &World,
    cfg: &EngineConfig,
    guard: &GuardrailConfig,
    changes: &[Change],
) -> Result<WhatIfReport, TopologyError> {
    let mut after = world.clone();
    let mut warnings = Vec::new();
    for change in changes {
        apply(&mut after, guard, change, &mut warnings)?;
    }
    let routes = |w: &World| {
        let cm = CostMatrix::build(w, &cfg.cost, &cfg.prices);
        compute_routes(&cm, &cfg.paths, None)
    };
    let (r0, r1) = (routes(world), routes(&after));
    let mut report = WhatIfReport {
        pairs_compared: 0,
        better: Vec::new(),
        worse: Vec::new(),
        unchanged: 0,
        lost: Vec::new(),
        gained: 0,
        capacity_before: undrained_capacity(world),
        capacity_after: undrained_capacity(&after),
        guardrail_warnings: warnings,
    };
    let inv0 = &world.inventory;
    let inv1 = &after.inventory;
    let names = |inv: &Inventory, p: &crate::path::Path| -> Vec<SiteId> {
        p.sites().iter().map(|&i| inv.site(i).id.clone()).collect()
    };
    let quality = |w: &World, p: &crate::path::Path| {
        Quality::of_path(
            p.links()
                .filter_map(|(a, b)| w.links.get(a, b).map(|v| &v.metrics)),
        )
    };
    for a1 in 0..inv1.len() {
        for b1 in 0..inv1.len() {
            let y = r1.get(a1, b1);
            let old = inv0
                .index_of(&inv1.sites()[a1].id)
                .zip(inv0.index_of(&inv1.sites()[b1].id));
            let Some((a0, b0)) = old else {
                report.gained += usize::from(!y.primary.is_none());
                continue;
            };
            let x = r0.get(usize::from(a0), usize::from(b0));
            match (x.primary.is_none(), y.primary.is_none()) {
                (true, true) => continue,
                (true, false) => {
                    report.gained += 1;
                    continue;
                }
                (false, true) => {
                    report
                        .lost
                        .push((inv0.site(a0).id.clone(), inv0.site(b0).id.clone()));
                    continue;
                }
                (false, false) => {}
            }
            report.pairs_compared += 1;
            let delta = y.primary_cost - x.primary_cost;
            if delta.abs() <= 0.1 {
                report.unchanged += 1;
                continue;
            }
            let d = PairDelta {
                src: inv0.site(a0).id.clone(),
                dst: inv0.site(b0).id.clone(),
                before: names(inv0, &x.primary),
                after: names(inv1, &y.primary),
                cost_before: x.primary_cost,
                cost_after: y.primary_cost,
                mos_before: quality(world, &x.primary).mos,
                mos_after: quality(&after, &y.primary).mos,
            };
            if delta < 0.0 {
                &mut report.better
            } else {
                &mut report.worse
            }
            .push(d);
        }
    }
    let gain = |d: &PairDelta| d.cost_after - d.cost_before;
    report.better.sort_by(|x, y| gain(x).total_cmp(&gain(y)));
    report.worse.sort_by(|x, y| gain(y).total_cmp(&gain(x)));
    Ok(report)
}

fn apply(
    w: &mut World,
    guard: &GuardrailConfig,
    change: &Change,
    warnings: &mut Vec<String>,
) -> Result<(), TopologyError> {
    let mut drain = |w: &mut World, target: DrainTarget| -> Result<(), TopologyError> {
        let req = DrainRequest {
            target,
            reason: "what-if".into(),
            author: "what-if".into(),
            at_ms: 0,
            origin: DrainOrigin::Operator,
            force: true,
            until_ms: None,
        };
        let healthy = vec![true; w.inventory.len()];
        let impact = w.drains.drain(&w.inventory, &healthy, guard, req)?;
        for rule in impact.overridden {
            warnings.push(format!("drain would be refused by guardrail {rule}"));
        }
        Ok(())
    };
    match change {
        Change::AddSite { site, links } => {
            let mut all: Vec<(SiteId, LinkMetrics)> = links.clone();
            for other in w.inventory.sites() {
                if !all.iter().any(|(p, _)| p == &other.id) {
                    all.push((other.id.clone(), LinkMetrics::rtt(estimated_rtt_ms(site, other))));
                }
            }
            w.add_site(site.clone(), &all)?;
        }
        Change::PromoteShadow { site } => {
            let i = w.inventory.require(site)?;
            if w.inventory.site(i).role != Role::Shadow {
                return Err(TopologyError::NotShadow(site.clone()));
            }
            w.inventory.set_role(i, Role::Active);
        }
        Change::DrainSite { site } => drain(w, DrainTarget::Site(site.clone()))?,
        Change::DrainRegion { region } => drain(w, DrainTarget::Region(region.clone()))?,
        Change::CutLink { a, b } => {
            let (i, j) = (w.inventory.require(a)?, w.inventory.require(b)?);
            set_both(w, i, j, |v| {
                v.map(|v| LinkView {
                    health: LinkHealth::Down,
                    ..v
                })
            });
        }
        Change::SetLink { a, b, metrics } => {
            metrics.validate()?;
            let (i, j) = (w.inventory.require(a)?, w.inventory.require(b)?);
            let m = *metrics;
            set_both(w, i, j, |_| {
                Some(LinkView {
                    metrics: m,
                    health: LinkHealth::Up,
                })
            });
        }
    }
    Ok(())
}

fn set_both(w: &mut World, i: SiteIdx, j: SiteIdx, f: impl Fn(Option<LinkView>) -> Option<LinkView>) {
    let links = std::sync::Arc::make_mut(&mut w.links);
    let (x, y) = (f(links.get(i, j).copied()), f(links.get(j, i).copied()));
    links.set(i, j, x);
    links.set(j, i, y);
}

/// The best routes of a world, without hysteresis; used by what-if and by tests as the
/// reference.
pub fn best_routes(world: &World, cfg: &EngineConfig) -> Routes {
    compute_routes(
        &CostMatrix::build(world, &cfg.cost, &cfg.prices),
        &cfg.paths,
        None,
    )
}
