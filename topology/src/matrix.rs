//! The dense cost matrix: the world flattened into what the path search reads.
//!
//! One `f32` per directed link in a row-major `n × n` array, `INFINITY` where a link may not be
//! used (down, never measured, or a self-link). `f32` halves the memory traffic of `f64`, and
//! every cost is a multiple of [`COST_QUANTUM`] so that the search's sums are exact.
//!
//! # Why quantised
//! Float addition is not associative: `(x + p) + (y + p + z)` and `((x + p + y) + p) + z` may
//! differ in the last bit. The search adds a path's links in whatever order its kernels find
//! fastest, while hysteresis, backups and reports re-add them in path order; with every cost a
//! multiple of 1/256 ms and every path below 2^16 ms, each of those sums is exact, so they all
//! agree to the bit whatever the order. A 4 µs step is far below what any probe can measure.

use std::sync::Arc;

use crate::cost::{CostWeights, LinkMetrics, PriceBook, Quality};
use crate::kernels::parallel_rows;
use crate::link::LinkHealth;
use crate::path::Path;
use crate::site::SiteIdx;
use crate::world::LinkTable;
use crate::world::World;

/// The step every cost is a multiple of, ms (1/256 ms, about 4 µs).
pub const COST_QUANTUM: f32 = 1.0 / 256.0;

/// Threads for a pass over the rows of an `n`-site matrix: one below `least` sites, where
/// starting a thread costs more than it shares, else one per core.
fn threads_from(n: usize, least: usize) -> usize {
    if n < least {
        1
    } else {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

/// Rounds a cost to the nearest multiple of [`COST_QUANTUM`] (infinity stays infinite).
#[inline]
pub fn quantize(c: f32) -> f32 {
    let x = c * 256.0;
    if (0.0..8.0e6).contains(&x) {
        // Half up by truncation: `round` is a library call on baseline x86-64.
        (x + 0.5) as u32 as f32 / 256.0
    } else {
        x.round() / 256.0
    }
}

/// Link costs, relay and endpoint eligibility, and link health flags, all dense.
#[derive(Debug, Clone, PartialEq)]
pub struct CostMatrix {
    n: usize,
    cost: Vec<f32>,
    degraded: Vec<bool>,
    /// Standard error of each link's cost from its loss estimate, ms; `None` when every link's
    /// metrics are exact (no allocation for tests, benchmarks and what-if).
    cost_se: Option<Vec<f32>>,
    /// The part of each link's cost that comes from its loss estimate, ms; allocated with
    /// `cost_se` (only measured loss is uncertain).
    loss_cost: Option<Vec<f32>>,
    relay_ok: Vec<bool>,
    endpoint_ok: Vec<bool>,
    relay_penalty: f32,
    /// The round trip of each usable link, ms: the voice threshold a path is most often held
    /// to, read for every long-haul pair, so dense (`None` like `links`).
    rtt: Option<Vec<f32>>,
    /// The link metrics the matrix was built from, for the predicted quality of a path
    /// (`None` for matrices built from raw costs and for the search's renumbered copy).
    links: Option<Arc<LinkTable>>,
}

impl CostMatrix {
    /// Flattens a world: down and drained links are unusable, stale links carry `stale_penalty_ms`,
    /// prices are added per link, shadow and drained sites never relay, shadow sites are no
    /// endpoints.
    pub fn build(world: &World, weights: &CostWeights, prices: &PriceBook) -> Self {
        let inv = &world.inventory;
        let n = inv.len();
        let mut cost = vec![f32::INFINITY; n * n];
        let mut degraded = vec![false; n * n];
        // Zeroed allocations are mapped lazily: rows whose links carry no loss error are never
        // written, so a mesh without measured loss costs no pages here.
        let mut se_all = vec![0.0f32; n * n];
        let mut loss_all = vec![0.0f32; n * n];
        let mut rtt = vec![f32::INFINITY; n * n];
        type Row<'r> = (
            &'r mut [f32],
            &'r mut [bool],
            &'r mut [f32],
            &'r mut [f32],
            &'r mut [f32],
        );
        let fill = |a: usize, (cost, degraded, se_row, loss_row, rtt_row): Row<'_>| {
            let mut any_se = false;
            for b in 0..n {
                if a == b {
                    continue;
                }
                let Some(view) = world.links.get(a as SiteIdx, b as SiteIdx) else {
                    continue;
                };
                if !view.health.usable() {
                    continue;
                }
                let mut c = weights.link_cost(&view.metrics);
                if view.health == LinkHealth::Stale {
                    c += weights.stale_penalty_ms;
                }
                c += prices.cost_ms(&inv.sites()[a].provider, &inv.sites()[b].provider);
                cost[b] = quantize(c as f32).max(COST_QUANTUM);
                rtt_row[b] = view.metrics.rtt_ms as f32;
                degraded[b] = view.health == LinkHealth::Degraded;
                let se = weights.link_cost_se(&view.metrics);
                if se > 0.0 {
                    any_se = true;
                    se_row[b] = se as f32;
                    loss_row[b] = weights.link_loss_cost(&view.metrics) as f32;
                }
            }
            any_se
        };
        let rows: Vec<_> = cost
            .chunks_mut(n.max(1))
            .zip(degraded.chunks_mut(n.max(1)))
            .zip(se_all.chunks_mut(n.max(1)).zip(loss_all.chunks_mut(n.max(1))))
            .zip(rtt.chunks_mut(n.max(1)))
            .map(|(((c, d), (e, l)), r)| (c, d, e, l, r))
            .collect();
        // Rows on every core for large meshes (a 1,000-site matrix is a million links).
        let threads = threads_from(n, 128);
        let any_se = parallel_rows(rows, threads, || false, |any, a, row| *any |= fill(a, row));
        // A drained link is unusable for routing, whatever its measured health.
        for (a, b) in world.drains.drained_links(inv) {
            let k = usize::from(a) * n + usize::from(b);
            cost[k] = f32::INFINITY;
            degraded[k] = false;
            rtt[k] = f32::INFINITY;
        }
        let (cost_se, loss_cost) = if any_se.into_iter().any(|x| x) {
            (Some(se_all), Some(loss_all))
        } else {
            (None, None)
        };
        CostMatrix {
            n,
            cost,
            degraded,
            cost_se,
            loss_cost,
            relay_ok: world.relay_mask(),
            endpoint_ok: world.endpoint_mask(),
            relay_penalty: quantize(weights.relay_penalty_ms as f32),
            rtt: Some(rtt),
            links: Some(world.links.clone()),
        }
    }

    /// Predicted quality of a path (round trip, loss, jitter, E-model) from the metrics of
    /// its links; `None` without link metrics or when a link has none.
    pub fn quality(&self, path: &Path) -> Option<Quality> {
        let links = self.links.as_ref()?;
        let mut metrics = [LinkMetrics::rtt(0.0); 3];
        let mut k = 0;
        for (a, b) in path.links() {
            *metrics.get_mut(k)? = links.get(a, b)?.metrics;
            k += 1;
        }
        (k > 0).then(|| Quality::of_path(metrics[..k].iter()))
    }

    /// The round trip of a path, ms: the sum of its links' (`None` without link metrics or
    /// when a link is unusable).
    pub fn path_rtt(&self, path: &Path) -> Option<f32> {
        let rtt = self.rtt.as_ref()?;
        let mut sum = 0.0;
        for (a, b) in path.links() {
            sum += *rtt.get(usize::from(a) * self.n + usize::from(b))?;
        }
        (sum.is_finite() && sum > 0.0).then_some(sum)
    }

    /// A matrix from raw costs (row-major, `INFINITY` for no link), for tests and benchmarks.
    /// Non-finite or non-positive entries and the diagonal are made unusable.
    pub fn from_costs(
        n: usize,
        mut cost: Vec<f32>,
        relay_ok: Vec<bool>,
        endpoint_ok: Vec<bool>,
        relay_penalty: f32,
    ) -> Self {
        assert_eq!(cost.len(), n * n, "cost matrix must be n*n");
        assert_eq!(relay_ok.len(), n, "relay mask must have n entries");
        assert_eq!(endpoint_ok.len(), n, "endpoint mask must have n entries");
        for (i, c) in cost.iter_mut().enumerate() {
            if i / n == i % n || !c.is_finite() || *c <= 0.0 {
                *c = f32::INFINITY;
            } else {
                *c = quantize(*c).max(COST_QUANTUM);
            }
        }
        CostMatrix {
            n,
            cost,
            degraded: vec![false; n * n],
            cost_se: None,
            loss_cost: None,
            relay_ok,
            endpoint_ok,
            relay_penalty: quantize(relay_penalty.max(0.0)),
            rtt: None,
            links: None,
        }
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True for an empty mesh.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Cost of link `a → b` (`INFINITY` when unusable).
    #[inline]
    pub fn cost(&self, a: usize, b: usize) -> f32 {
        self.cost[a * self.n + b]
    }

    /// One row of costs: every link out of `a`.
    #[inline]
    pub fn row(&self, a: usize) -> &[f32] {
        &self.cost[a * self.n..(a + 1) * self.n]
    }

    /// Whether link `a → b` is degraded.
    pub fn degraded(&self, a: usize, b: usize) -> bool {
        self.degraded[a * self.n + b]
    }

    /// Whether site `i` may relay.
    #[inline]
    pub fn relay_ok(&self, i: usize) -> bool {
        self.relay_ok[i]
    }

    /// Whether site `i` is an endpoint of routes.
    #[inline]
    pub fn endpoint_ok(&self, i: usize) -> bool {
        self.endpoint_ok[i]
    }

    /// Cost added per relay.
    pub fn relay_penalty(&self) -> f32 {
        self.relay_penalty
    }

    /// Standard error of link `a → b`'s cost, ms (0 when its metrics are exact).
    #[inline]
    pub fn cost_se(&self, a: usize, b: usize) -> f32 {
        self.cost_se.as_ref().map_or(0.0, |v| v[a * self.n + b])
    }

    /// The part of link `a → b`'s cost that comes from an uncertain loss estimate, ms.
    #[inline]
    pub fn loss_cost(&self, a: usize, b: usize) -> f32 {
        self.loss_cost.as_ref().map_or(0.0, |v| v[a * self.n + b])
    }

    /// Marks a link degraded (tests and what-if).
    pub fn set_degraded(&mut self, a: usize, b: usize, degraded: bool) {
        self.degraded[a * self.n + b] = degraded;
    }
}

impl CostMatrix {
    /// The whole cost array, row-major.
    pub fn row_major(&self) -> &[f32] {
        &self.cost
    }
}

impl CostMatrix {
    /// What the path search reads, with sites renumbered: site `p` of the result is site
    /// `order[p]` here. Only the costs and the relay and endpoint masks: no link is marked
    /// degraded and no cost is uncertain there, since the search never asks (hysteresis reads
    /// the original matrix); permuting those too took a third of the search's serial start.
    /// The costs are written into `buf` (kept between computations), rows on every core from
    /// 384 sites.
    pub(crate) fn permuted_costs(&self, order: &[u32], mut buf: Vec<f32>) -> CostMatrix {
        let n = self.n;
        assert_eq!(order.len(), n, "a permutation of every site");
        // Every entry is written below.
        buf.resize(n * n, f32::INFINITY);
        let rows: Vec<_> = buf.chunks_mut(n.max(1)).collect();
        // Starting a thread costs more than 200 sites' gather saves (0.12 → 0.16 ms).
        let threads = threads_from(n, 384);
        parallel_rows(
            rows,
            threads,
            || (),
            |(), p, out: &mut [f32]| {
                let from = self.row(order[p] as usize);
                for (o, &b) in out.iter_mut().zip(order) {
                    *o = from[b as usize];
                }
            },
        );
        CostMatrix {
            n,
            cost: buf,
            degraded: vec![false; n * n],
            cost_se: None,
            loss_cost: None,
            relay_ok: order.iter().map(|&i| self.relay_ok[i as usize]).collect(),
            endpoint_ok: order.iter().map(|&i| self.endpoint_ok[i as usize]).collect(),
            relay_penalty: self.relay_penalty,
            rtt: None,
            links: None,
        }
    }

    /// The cost array, given back for reuse (see [`CostMatrix::permuted_costs`]).
    pub(crate) fn into_costs(self) -> Vec<f32> {
        self.cost
    }
}
