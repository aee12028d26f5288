//! Full route recomputation against petgraph's Floyd–Warshall, on meshes of 50 to 1,000 sites.
//!
//! The mesh starts from the measured Azure matrix (`data/azure-2025`) and grows with synthetic
//! sites on the globe, each near a real one (data centers cluster where people are), whose RTT
//! to every other site is the great-circle estimate × a noisy inflation factor; 3% of links
//! carry 0.5–5% loss and every link 0–3 ms of jitter. `axon/{N}` is one `RouteEngine::compute`:
//! cost matrix, primaries and backups with `max_relays = 2`, hysteresis for every pair.
//! `petgraph_floyd_warshall/{N}` is petgraph's all-pairs shortest paths on the same costs
//! (which computes less: no hop limit, no backups). A summary table is printed at the end.
//!
//! `AXON_BENCH_SIZES=50,200` limits the sizes; `AXON_BENCH_THREADS=1` runs the search on one
//! thread.

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use petgraph::graph::DiGraph;
use topology::data::world_from_csv;
use topology::link::LinkView;
use topology::whatif::RTT_INFLATION;
use topology::{
    CostMatrix, EngineConfig, Epoch, LinkHealth, LinkMetrics, Reason, RouteEngine, Site, Version, World,
    compute_routes,
};

const SIZES: [usize; 4] = [50, 200, 500, 1000];

fn spread() -> f64 {
    std::env::var("AXON_BENCH_SPREAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20.0)
}

/// splitmix64: a tiny seeded generator so every run builds the same mesh.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The measured Azure matrix.
fn real_world() -> World {
    let dir = format!("{}/../data/azure-2025", env!("CARGO_MANIFEST_DIR"));
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap();
    world_from_csv("sites.csv", &read("sites.csv"), "rtt.csv", &read("rtt.csv")).unwrap()
}

fn mesh(n: usize, seed: u64) -> World {
    let real = real_world();
    let mut rng = Rng(seed);
    let base = real.inventory.sites();
    let nb = base.len();
    let mut sites: Vec<Site> = base.iter().take(n).cloned().collect();
    // Each site's anchor: the real site it was placed near (real sites anchor themselves).
    let mut anchor: Vec<usize> = (0..sites.len()).collect();
    while sites.len() < n {
        let a = (rng.next() % nb as u64) as usize;
        let at = &base[a];
        let lat = (at.lat + (rng.unit() - 0.5) * spread()).clamp(-60.0, 70.0);
        let lon = ((at.lon + (rng.unit() - 0.5) * spread() * 1.5 + 540.0) % 360.0) - 180.0;
        let i = sites.len();
        sites.push(Site::new(&format!("syn-{i}"), at.region.as_str(), "metal", lat, lon, 1000).unwrap());
        anchor.push(a);
    }
    // A measured pair's inflation over the great circle, in the form of `estimated_rtt_ms`
    // (`infl · km/100 + 1`); pairs too close for the ratio to mean anything take the typical one.
    let inflation = |x: usize, y: usize| -> f64 {
        let (sx, sy) = (&base[x], &base[y]);
        let km = sx.distance_km(sy);
        match real.links.get(x as u16, y as u16) {
            Some(v) if x != y && km > 500.0 => ((v.metrics.rtt_ms - 1.0) / (km / 100.0)).clamp(1.0, 4.0),
            _ => RTT_INFLATION,
        }
    };
    let inv = topology::Inventory::new(sites).unwrap();
    let mut world = World::new(inv);
    let links = std::sync::Arc::make_mut(&mut world.links);
    for a in 0..n {
        for b in a + 1..n {
            let (ai, bi) = (a as u16, b as u16);
            let measured = (a < nb && b < nb).then(|| real.links.get(ai, bi)).flatten();
            let rtt = match measured {
                Some(v) => v.metrics.rtt_ms,
                None => {
                    // Sites near each other share their region's fibre: a synthetic link is
                    // inflated like its anchors' measured link, give or take 10%.
                    let km = world.inventory.site(ai).distance_km(world.inventory.site(bi));
                    inflation(anchor[a], anchor[b]) * (0.9 + 0.2 * rng.unit()) * km / 100.0 + 1.0
                }
            };
            // Round trips are symmetric; loss and jitter belong to each direction.
            for (x, y) in [(ai, bi), (bi, ai)] {
                let loss = if rng.unit() < 0.03 {
                    0.005 + 0.045 * rng.unit()
                } else {
                    0.0
                };
                let metrics = LinkMetrics {
                    rtt_ms: rtt,
                    loss,
                    jitter_ms: 3.0 * rng.unit(),
                    loss_se: 0.0,
                };
                links.set(
                    x,
                    y,
                    Some(LinkView {
                        metrics,
                        health: LinkHealth::Up,
                    }),
                );
            }
        }
    }
    world
}

/// `AXON_BENCH_THREADS`: threads for the search (default 0, one per core).
fn threads() -> usize {
    std::env::var("AXON_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn sizes() -> Vec<usize> {
    match std::env::var("AXON_BENCH_SIZES") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => SIZES.to_vec(),
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_compute");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for n in sizes() {
        let world = mesh(n, 42);
        let mut cfg = EngineConfig::default();
        cfg.paths.threads = threads();
        let mut engine = RouteEngine::new(cfg.clone(), Epoch(1), Version(1)).unwrap();
        // Warm the hysteresis memory so every iteration is a steady-state recomputation.
        engine.compute(&world, 0);
        let mut now = 1000;
        group.bench_with_input(BenchmarkId::new("axon", n), &world, |b, w| {
            b.iter(|| {
                now += 1000;
                black_box(engine.compute(w, now).table.id())
            })
        });
        let cm = CostMatrix::build(&world, &cfg.cost, &cfg.prices);
        let mut g = DiGraph::<(), f32>::with_capacity(n, n * n);
        let nodes: Vec<_> = (0..n).map(|_| g.add_node(())).collect();
        for a in 0..n {
            for b in 0..n {
                let w = cm.cost(a, b);
                if w.is_finite() {
                    g.add_edge(nodes[a], nodes[b], w);
                }
            }
        }
        group.bench_with_input(BenchmarkId::new("petgraph_floyd_warshall", n), &g, |b, g| {
            b.iter(|| black_box(petgraph::algo::floyd_warshall(g, |e| *e.weight()).unwrap().len()))
        });
    }
    group.finish();
}

/// Median in ms from criterion's saved estimates.
fn median_ms(id: &str, n: usize) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| format!("{}/../target", env!("CARGO_MANIFEST_DIR")));
    let path = format!("{dir}/criterion/route_compute/{id}/{n}/new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    Some(v["median"]["point_estimate"].as_f64()? / 1e6)
}

/// Share of ordered pairs whose best path is relayed: how much work the mesh gives the search.
fn relayed_share(world: &World) -> f64 {
    let cfg = EngineConfig::default();
    let cm = CostMatrix::build(world, &cfg.cost, &cfg.prices);
    let routes = compute_routes(&cm, &cfg.paths, None);
    let n = cm.len();
    let relayed = routes
        .pairs()
        .iter()
        .filter(|p| matches!(p.reason, Reason::RelayBeatsDirect { .. }))
        .count();
    relayed as f64 / (n * (n - 1)) as f64
}

fn main() {
    let real = real_world();
    println!(
        "measured matrix ({} sites): a relay beats the direct link for {:.1}% of pairs",
        real.inventory.len(),
        100.0 * relayed_share(&real)
    );
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    println!("\nroute_compute (median of criterion samples)");
    println!(
        "{:>6} {:>12} {:>22} {:>8} {:>10}",
        "N", "axon ms", "floyd_warshall ms", "ratio", "relayed"
    );
    for n in sizes() {
        if let (Some(a), Some(f)) = (median_ms("axon", n), median_ms("petgraph_floyd_warshall", n)) {
            let share = 100.0 * relayed_share(&mesh(n, 42));
            println!("{n:>6} {a:>12.3} {f:>22.3} {:>7.1}x {share:>9.1}%", f / a);
        }
    }
}
