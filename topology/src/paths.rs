//! Path computation: for every ordered pair, the best path with at most `max_relays` relays,
//! a backup that shares no relay and no link with it where one exists, and hysteresis between
//! computations.
//!
//! # How it is fast
//! The search is two min-plus products over a dense `f32` matrix, written for the cache:
//! 1. `H1[s][b]`: the best and second-best paths from `s` to `b` with at most one relay (two
//!    candidates with distinct relays, so that a backup can route around an excluded relay
//!    without searching again);
//! 2. `best[a][b] = min(H1[a][b], min_r2 (H1[a][r2] + penalty) + C[r2][b])`, where `r2` runs
//!    only over the sites whose best path from `a` is already relayed: a second relay in front
//!    of `r2` cannot win unless it beats the direct link to `r2`.
//!
//! Each row `a` is computed on its own (rows run on every core), one block of [`BLOCK`]
//! destinations at a time, with relays visited cheapest first and bounded per sub-block of
//! [`SUB`] destinations: a relay cannot help once its first leg alone reaches the block's worst
//! current cost, and it cannot help a sub-block when its first leg plus its cheapest
//! continuation into the sub-block (precomputed) does not beat that sub-block's worst cost. The
//! inner loop over a sub-block is branch-free so that it compiles to SIMD. Costs are multiples
//! of [`crate::matrix::COST_QUANTUM`], so sums added in any order agree to the bit.
//!
//! Walks that revisit a site (`a→r→a→b`) are never chosen: every link costs more than zero, so
//! such a walk costs more than the simple path inside it, which is always a candidate.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::engine::RefreshConfig;
use crate::error::TopologyError;
use crate::hysteresis::{
    Decision, HysteresisConfig, HysteresisState, PairMemory, SwitchReason, decide_with_quality,
};
use crate::kernels::{
    self, ABSENT, BackupResult, BackupStart, GROUP, Grid, INF, NEG, NONE, Shared, Steps, block_minima,
    blocked, parallel_rows, per_isa, refill,
};
use crate::locality::locality_order;
use crate::matrix::CostMatrix;
use crate::path::Path;
use crate::site::SiteIdx;

/// Destinations whose relay scan is shared: a relay list is walked once per source and block.
pub const BLOCK: usize = 64;

/// Destinations bounded and updated together: small enough that a sub-block's worst cost
/// stays a tight bound, wide enough for SIMD.
pub const SUB: usize = 8;

/// How paths are searched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathConfig {
    /// Most relays on a path: 0, 1 or 2. Default 2.
    pub max_relays: u8,
    /// Threads for a computation; 0 means one per core. Default 0.
    pub threads: usize,
}

impl Default for PathConfig {
    fn default() -> Self {
        PathConfig {
            max_relays: 2,
            threads: 0,
        }
    }
}

impl PathConfig {
    /// Refuses `max_relays` above 2.
    pub fn validate(&self) -> Result<(), TopologyError> {
        if self.max_relays > 2 {
            return Err(TopologyError::InvalidValue {
                field: "max_relays",
                detail: format!("{} (must be 0, 1 or 2)", self.max_relays),
            });
        }
        Ok(())
    }

    fn thread_count(&self, n: usize) -> usize {
        if self.threads != 0 {
            return self.threads.clamp(1, n.max(1));
        }
        // Spawning costs more than a small mesh takes to compute.
        if n < 64 {
            return 1;
        }
        std::thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            .min(n)
    }
}

/// Why a pair is on its path.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Reason {
    /// No usable path exists.
    NoRoute,
    /// The direct link is the best path.
    Direct,
    /// A relayed path beats the direct link's cost.
    RelayBeatsDirect {
        /// The direct link's cost, ms.
        direct_cost: f32,
    },
    /// The direct link is unusable (down or unmeasured); a relay is the only way.
    DirectUnusable,
    /// A better candidate exists but has not yet won by the margin for long enough.
    Kept {
        /// Cost of the candidate, ms.
        candidate_cost: f32,
        /// Gain the candidate would need, ms.
        gain_needed: f32,
        /// Consecutive computations it has won by that gain so far.
        streak: u16,
        /// Consecutive computations it has won by the patient margin so far (see
        /// [`crate::HysteresisConfig::patient_ratio`]): at `patient_after` it takes over.
        #[serde(default)]
        patience: u16,
    },
    /// The pair switched path in this computation.
    Switched(SwitchReason),
    /// The cheapest path breaks the voice thresholds; this one, within the voice cost slack of
    /// it, meets them.
    MeetsVoice {
        /// Cost of the cheapest path, ms.
        cheapest_cost: f32,
    },
}

/// The route of one ordered pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairRoute {
    /// The path in use (`Path::NONE` when unreachable).
    pub primary: Path,
    /// Its cost, ms.
    pub primary_cost: f32,
    /// The backup (`Path::NONE` when no other path exists).
    pub backup: Path,
    /// Its cost, ms.
    pub backup_cost: f32,
    /// True when the backup shares no relay and no link with the primary.
    pub backup_disjoint: bool,
    /// Why the primary was chosen.
    pub reason: Reason,
}

impl PairRoute {
    const UNREACHABLE: PairRoute = PairRoute {
        primary: Path::NONE,
        primary_cost: INF,
        backup: Path::NONE,
        backup_cost: INF,
        backup_disjoint: false,
        reason: Reason::NoRoute,
    };
}

/// Routes for every ordered pair, dense `n × n` (the diagonal and pairs whose ends are not
/// endpoints hold `Reason::NoRoute`).
#[derive(Debug, Clone, PartialEq)]
pub struct Routes {
    n: usize,
    pairs: Vec<PairRoute>,
}

impl Routes {
    /// Number of sites.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True for an empty mesh.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The route from `a` to `b`.
    pub fn get(&self, a: usize, b: usize) -> &PairRoute {
        &self.pairs[a * self.n + b]
    }

    /// All pairs, row-major.
    pub fn pairs(&self) -> &[PairRoute] {
        &self.pairs
    }
}

/// A pair's chosen primary (in site numbering), its cost and why.
type Chosen = (Path, f32, Reason);

/// Buffers of a computation, kept from one computation to the next: asking the kernel for
/// fresh zeroed pages every second costs more than a tenth of a computation. Holds no result:
/// a clone is empty.
#[derive(Debug, Default)]
pub struct Scratch {
    costs: Vec<f32>,
    permuted: Vec<f32>,
    groups: Vec<Group>,
    pairs: Vec<PairRoute>,
}

impl Clone for Scratch {
    fn clone(&self) -> Self {
        Scratch::default()
    }
}

impl Scratch {
    /// Takes back the rows of routes no longer needed (a computation whose result changed
    /// nothing), so that the next computation writes into them.
    pub fn recycle(&mut self, routes: Routes) {
        self.pairs = routes.pairs;
    }
}

/// One thread's working rows for a group of sources (see [`GROUP`]).
#[derive(Debug, Default)]
struct Group {
    steps: Steps,
    start: BackupStart,
    chosen: Vec<Chosen>,
    backups: BackupResult,
}

/// Computes every pair's primary and backup. With `hysteresis`, primaries follow the
/// hysteresis rules and the state is updated; without, the best path is always taken.
pub fn compute_routes(
    cm: &CostMatrix,
    cfg: &PathConfig,
    hysteresis: Option<(&HysteresisConfig, &mut HysteresisState)>,
) -> Routes {
    compute_routes_in(cm, cfg, hysteresis, &mut Scratch::default(), None, None).0
}

/// How a computation's routes compare with the routes in force (see [`compute_routes_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compared {
    /// Every pair's primary and backup are those of `previous`.
    pub same_paths: bool,
    /// Some pair's primary cost drifted from the published costs past the refresh margins.
    pub costs_drifted: bool,
}

/// [`compute_routes`] with buffers kept by the caller between computations, and how the
/// routes compare with those in force: whether every pair's primary and backup are those of
/// `previous` (the last routes of the same sites), and whether a primary cost drifted from
/// `published` (the primary costs in force, row-major, with the margins that make a drift).
///
/// With hysteresis the memory holds every pair's last primary and backup, so a change is seen
/// where the memory is updated and `previous` is not read at all (at 1,000 sites it is 48 MB,
/// and comparing it row by row was a cache miss per pair): `previous` must then be the routes
/// this same memory last produced, as [`crate::RouteEngine`] keeps them. Without hysteresis,
/// each row is compared with `previous` while it is still in cache. The costs are compared
/// the same way, each row while it is in cache, against 4 bytes a pair.
pub fn compute_routes_in(
    cm: &CostMatrix,
    cfg: &PathConfig,
    hysteresis: Option<(&HysteresisConfig, &mut HysteresisState)>,
    scratch: &mut Scratch,
    previous: Option<&Routes>,
    published: Option<(&RefreshConfig, &[f32])>,
) -> (Routes, Compared) {
    let n = cm.len();
    let threads = cfg.thread_count(n);
    let max_relays = cfg.max_relays.min(2);
    // Search in an order that keeps each block of destinations compact (see `locality`).
    let order = locality_order(cm);
    let mut pos = vec![0u32; n];
    for (p, &o) in order.iter().enumerate() {
        pos[o as usize] = p as u32;
    }
    let pm = cm.permuted_costs(&order, std::mem::take(&mut scratch.permuted));
    let g = Grid::new(n);
    blocked(g, |r| pm.row(r), &mut scratch.costs);
    let costs = &scratch.costs[..];
    let bmin_c = block_minima(g, costs);
    let mut min_in = vec![INF; n];
    for r in (0..n).filter(|&r| pm.relay_ok(r)) {
        for (m, &c) in min_in.iter_mut().zip(pm.row(r)) {
            *m = if c < *m { c } else { *m };
        }
    }
    let shared = Shared {
        g,
        cm: &pm,
        costs,
        bmin_c: &bmin_c,
    };
    let search = Search {
        cm,
        pm: &pm,
        g,
        order: &order,
        pos: &pos,
        max_relays,
        min_in: &min_in,
        costs,
    };

    // Memory and output rows, in search order.
    let (hcfg, mems) = match hysteresis {
        Some((c, st)) => (Some(c), Some(st.rows_mut())),
        None => (None, None),
    };
    let mut mem_by_site: Vec<Option<&mut [PairMemory]>> = match mems {
        Some(m) if m.len() == n * n => m.chunks_mut(n.max(1)).map(Some).collect(),
        _ => (0..n).map(|_| None).collect(),
    };
    // Every entry is written below (`assemble` covers every row and destination): a buffer of
    // the right size is not cleared first.
    let mut pairs = std::mem::take(&mut scratch.pairs);
    if pairs.len() != n * n {
        refill(&mut pairs, n * n, PairRoute::UNREACHABLE);
    }
    let mut out_by_site: Vec<Option<&mut [PairRoute]>> = pairs.chunks_mut(n.max(1)).map(Some).collect();
    let mut rows: Vec<Row<'_>> = order
        .iter()
        .map(|&o| {
            let o = o as usize;
            let out = out_by_site[o].take().expect("order is a permutation");
            (out, mem_by_site[o].take())
        })
        .collect();
    // Groups small enough that every core gets several (the last ones even out the load),
    // at most GROUP sources.
    let group = n.div_ceil(threads * 6).clamp(8, GROUP);
    let mut units = Vec::new();
    let mut s0 = 0;
    while !rows.is_empty() {
        let rest = rows.split_off(group.min(rows.len()));
        let unit = std::mem::replace(&mut rows, rest);
        let len = unit.len();
        units.push((s0, unit));
        s0 += len;
    }

    let previous = previous.filter(|p| p.n == n);
    let published = published.filter(|(r, c)| r.enabled && c.len() == n * n);
    let differs = AtomicBool::new(false);
    let drifted = AtomicBool::new(false);
    let ctx = GroupCtx {
        shared,
        search,
        hcfg,
        previous,
        differs: &differs,
        published,
        drifted: &drifted,
    };
    // Every group of sources, from link costs to routes, on every core.
    let pool = std::sync::Mutex::new(std::mem::take(&mut scratch.groups));
    let used = parallel_rows(
        units,
        threads,
        || pool.lock().ok().and_then(|mut p| p.pop()).unwrap_or_default(),
        |grp: &mut Group, _, (s0, mut rows): (usize, Vec<Row<'_>>)| {
            run_group(&ctx, grp, s0, &mut rows);
        },
    );
    scratch.groups = used;
    scratch.permuted = pm.into_costs();
    let compared = Compared {
        same_paths: previous.is_some() && !differs.into_inner(),
        costs_drifted: drifted.into_inner(),
    };
    (Routes { n, pairs }, compared)
}

/// What every group of sources reads.
struct GroupCtx<'a> {
    shared: Shared<'a>,
    search: Search<'a>,
    hcfg: Option<&'a HysteresisConfig>,
    previous: Option<&'a Routes>,
    /// Set once a row's primaries or backups differ from `previous`.
    differs: &'a AtomicBool,
    /// The primary costs in force, and the margins of a drift.
    published: Option<(&'a RefreshConfig, &'a [f32])>,
    /// Set once a row's primary cost drifted from `published`.
    drifted: &'a AtomicBool,
}

per_isa! {
    /// One group of sources, from link costs to routes: the best build the CPU runs (see
    /// `kernels::Isa`).
    fn run_group(ctx: &GroupCtx<'_>, grp: &mut Group, s0: usize, rows: &mut [Row<'_>]) => run_group_body
}

#[inline(always)]
fn run_group_body(ctx: &GroupCtx<'_>, grp: &mut Group, s0: usize, rows: &mut [Row<'_>]) {
    let GroupCtx {
        shared,
        search,
        hcfg,
        previous,
        differs,
        published,
        drifted,
    } = ctx;
    let (hcfg, previous) = (*hcfg, *previous);
    let (n, order, max_relays) = (search.g.n, search.order, search.max_relays);
    let len = rows.len();
    let Group {
        steps,
        start,
        chosen,
        backups,
    } = grp;
    steps.prepare(shared, s0, len);
    if max_relays >= 1 {
        kernels::one_relay(steps, shared, s0, len);
    }
    if max_relays == 2 {
        steps.second_relays(shared, len);
        kernels::two_relay(steps, shared, s0, len);
    }
    search.size_start(start, chosen, len);
    // Whether a row's primaries moved off what its memory held (read only with memory).
    let mut moved = false;
    for (i, (_, mem)) in rows.iter_mut().enumerate() {
        moved |= search.choose(hcfg, (s0 + i, i), steps, (start, chosen), mem.as_deref_mut());
    }
    if max_relays >= 1 {
        kernels::backups(shared, steps, start, (s0, len, max_relays == 2), backups);
    }
    for (i, (out, mem)) in rows.iter_mut().enumerate() {
        let bk = (max_relays >= 1).then_some(&*backups);
        let remembered = mem.is_some() && hcfg.is_some();
        moved |= search.assemble(hcfg, (s0 + i, i), chosen, bk, out, mem.as_deref_mut());
        if let Some(prev) = previous.filter(|_| !differs.load(Ordering::Relaxed)) {
            let a = order[s0 + i] as usize;
            let same_as = || {
                prev.pairs[a * n..(a + 1) * n]
                    .iter()
                    .zip(out.iter())
                    .all(|(x, y)| x.primary == y.primary && x.backup == y.backup)
            };
            // The memory's account must agree with the tables it produced (tests run
            // debug builds: every engine test checks it).
            debug_assert!(
                !remembered || moved || same_as(),
                "memory and previous routes disagree"
            );
            let same = if remembered { !moved } else { same_as() };
            if !same {
                differs.store(true, Ordering::Relaxed);
            }
        }
        if let Some((refresh, costs)) = published.filter(|_| !drifted.load(Ordering::Relaxed)) {
            let a = order[s0 + i] as usize;
            let drift = costs[a * n..(a + 1) * n]
                .iter()
                .zip(out.iter())
                .any(|(&c, r)| refresh.drifted(f64::from(c), f64::from(r.primary_cost)));
            if drift {
                drifted.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// A source's output row and hysteresis memory row (by destination site).
type Row<'a> = (&'a mut [PairRoute], Option<&'a mut [PairMemory]>);

/// The search's shared inputs, in search order (`pm`, positions `p`); paths handed out and
/// judged by hysteresis are in the caller's numbering (`cm`).
struct Search<'a> {
    cm: &'a CostMatrix,
    pm: &'a CostMatrix,
    g: Grid,
    order: &'a [u32],
    pos: &'a [u32],
    max_relays: u8,
    /// The cheapest link into each site from a relay: a lower bound on any path's last leg.
    min_in: &'a [f32],
    /// Link costs, block-major: a destination's column is read from one block's slab, which
    /// stays in cache, where the row-major matrix would cost a miss per relay.
    costs: &'a [f32],
}

impl Search<'_> {
    /// Sizes a group's backup start and chosen rows.
    #[inline(always)]
    fn size_start(&self, start: &mut BackupStart, chosen: &mut Vec<Chosen>, rows: usize) {
        let len = rows * self.g.np();
        refill(&mut start.x1, len, ABSENT);
        refill(&mut start.x2, len, ABSENT);
        refill(&mut start.init, len, NEG);
        refill(&mut start.init_r1, len, NONE);
        refill(chosen, rows * self.g.n, (Path::NONE, INF, Reason::NoRoute));
    }

    /// The best cost found by the search from the group's `i`-th source (position `ap`).
    fn best_cost(&self, st: &Steps, (ap, i): (usize, usize), bp: usize) -> f32 {
        let at = i * self.g.np() + bp;
        match self.max_relays {
            2 => st.best[at],
            1 => st.h[at],
            _ => self.pm.cost(ap, bp),
        }
    }

    /// The best path found by the search, in the caller's numbering.
    fn best_path(&self, st: &Steps, (ap, i): (usize, usize), bp: usize) -> Path {
        let row = i * self.g.np();
        let via = |to: usize| {
            if self.max_relays >= 1 {
                st.m[row + to]
            } else {
                NONE
            }
        };
        let last = if self.max_relays == 2 {
            st.arg[row + bp]
        } else {
            NONE
        };
        // Step 2 records the last relay; the first is on the best path to it.
        let (r1, r2) = match last {
            NONE => (via(bp), NONE),
            r2 => (via(r2 as usize), r2),
        };
        self.site_path(ap, r1, r2, bp)
    }

    /// A path given in positions (relays `NONE` when absent), in the caller's numbering.
    #[inline]
    fn site_path(&self, ap: usize, r1: u32, r2: u32, bp: usize) -> Path {
        let o = |p: u32| if p == NONE { NONE } else { self.order[p as usize] };
        Path::from_hops(self.order[ap] as SiteIdx, o(r1), o(r2), self.order[bp] as SiteIdx)
    }

    /// Chooses the primaries of row `ap` (through hysteresis when given) and prepares the
    /// backup search: the relays to avoid and the starting cost of each destination.
    #[inline(always)]
    fn choose(
        &self,
        hcfg: Option<&HysteresisConfig>,
        (ap, i): (usize, usize),
        st: &Steps,
        (start, chosen): (&mut BackupStart, &mut [Chosen]),
        mut mem: Option<&mut [PairMemory]>,
    ) -> bool {
        let pm = self.pm;
        let (n, np) = (self.g.n, self.g.np());
        let chosen = &mut chosen[i * n..(i + 1) * n];
        let x1 = &mut start.x1[i * np..(i + 1) * np];
        let x2 = &mut start.x2[i * np..(i + 1) * np];
        let init = &mut start.init[i * np..(i + 1) * np];
        let init_r1 = &mut start.init_r1[i * np..(i + 1) * np];
        if !pm.endpoint_ok(ap) {
            let Some(mem) = mem else { return false };
            let held = mem.iter().any(|m| !m.current.is_none() || !m.backup.is_none());
            mem.fill(PairMemory::default());
            return held;
        }
        let mut moved = false;
        // By destination site: the memory row (tens of kilobytes, read from main memory once
        // per computation) is then read in order and prefetched, where reading it in search
        // order waited on a cache miss per pair. The search's rows are small and cached.
        for (b, &bp) in self.pos.iter().enumerate() {
            let bp = bp as usize;
            let cost = self.best_cost(st, (ap, i), bp);
            let candidate = if bp != ap && pm.endpoint_ok(bp) && cost.is_finite() {
                self.best_path(st, (ap, i), bp)
            } else {
                Path::NONE
            };
            let direct = pm.cost(ap, bp);
            let voice = hcfg
                .map(|h| &h.voice)
                .filter(|v| !candidate.is_none() && v.may_break_rtt(cost))
                .and_then(|v| self.voice_alternative(v, st, (ap, i), bp, candidate, cost));
            let cheapest_cost = cost;
            let (candidate, cost) = voice.map_or((candidate, cost), |(p, c)| (p, c));
            let base = if voice.is_some() {
                Reason::MeetsVoice { cheapest_cost }
            } else if candidate.is_none() {
                Reason::NoRoute
            } else if candidate.is_direct() {
                Reason::Direct
            } else if direct.is_finite() {
                Reason::RelayBeatsDirect { direct_cost: direct }
            } else {
                Reason::DirectUnusable
            };
            let pick = match (hcfg, mem.as_deref_mut()) {
                (Some(hc), Some(mem)) => {
                    let m = &mut mem[b];
                    let was = m.current;
                    let eval = |p: &Path| self.cm.evaluate(p);
                    let decision = decide_with_quality(hc, m, candidate, cost, eval, |p| self.cm.quality(p));
                    moved |= m.current != was;
                    match decision {
                        Decision::Steady => (candidate, cost, base),
                        Decision::Kept {
                            current_cost,
                            gain_needed,
                            streak,
                            patience,
                        } => (
                            m.current,
                            current_cost,
                            Reason::Kept {
                                candidate_cost: cost,
                                gain_needed,
                                streak: u16::try_from(streak).unwrap_or(u16::MAX),
                                patience: u16::try_from(patience).unwrap_or(u16::MAX),
                            },
                        ),
                        Decision::Switched { path, reason } => {
                            (path, self.cm.path_cost(&path), Reason::Switched(reason))
                        }
                    }
                }
                _ => (candidate, cost, base),
            };
            let relays = pick.0.relays();
            x1[bp] = relays.first().map_or(ABSENT, |&x| self.pos[usize::from(x)]);
            x2[bp] = relays.get(1).map_or(ABSENT, |&x| self.pos[usize::from(x)]);
            // Start the backup search from the best allowed path already known, so that its
            // bound is tight from the first relay: the direct link unless the primary is direct,
            // and the best one-relay paths through a relay the primary does not use.
            // NEG_INFINITY marks "no backup wanted".
            let (x1b, x2b) = (x1[bp], x2[bp]);
            let mut start = if pick.0.is_none() {
                (NEG, NONE)
            } else if pick.0.is_direct() {
                (INF, NONE)
            } else {
                (direct, NONE)
            };
            if self.max_relays >= 1 && !pick.0.is_none() {
                let at = i * np + bp;
                let tops = [(st.h[at], st.m[at]), (st.hs[at], st.ms[at])];
                for (c, r) in tops {
                    if r != NONE && r != x1b && r != x2b && c < start.0 {
                        start = (c, r);
                    }
                }
                // Both of the best two are relays of the primary (only a two-relay primary can
                // do that): a third may still beat the direct link, so look for it.
                if tops.iter().all(|&(_, r)| r == x1b || r == x2b) {
                    for &(l, r) in &st.relays[i] {
                        if l + self.min_in[bp] >= start.0 {
                            break;
                        }
                        let c = l + self.costs[self.g.at(r as usize, bp)];
                        if r != x1b && r != x2b && c < start.0 {
                            start = (c, r);
                        }
                    }
                }
            }
            (init[bp], init_r1[bp]) = start;
            chosen[bp] = pick;
        }
        moved
    }

    /// When the cheapest path `best` (cost `cost`) breaks the voice round trip: the cheapest of
    /// the search's other candidates — the best and second-best paths with at most one relay
    /// — that meets every voice threshold with the margin, if it costs at most
    /// `cost_slack_ratio` more. Only pairs whose cost allows a round trip over the threshold
    /// get here (long hauls), and round trips are read from the dense matrix; loss and jitter
    /// past their thresholds are priced by the cost function itself.
    fn voice_alternative(
        &self,
        v: &crate::hysteresis::VoiceThresholds,
        st: &Steps,
        (ap, i): (usize, usize),
        bp: usize,
        best: Path,
        cost: f32,
    ) -> Option<(Path, f32)> {
        let cm = self.cm;
        if self.max_relays == 0 || cm.path_rtt(&best).is_none_or(|r| f64::from(r) <= v.rtt_ms) {
            return None;
        }
        let at = i * self.g.np() + bp;
        let (limit, rtt_limit) = (
            cost * (1.0 + v.cost_slack_ratio as f32),
            v.rtt_ms * (1.0 - v.margin_ratio),
        );
        [(st.h[at], st.m[at]), (st.hs[at], st.ms[at])]
            .into_iter()
            .filter(|&(c, _)| c <= limit)
            .map(|(c, r)| (self.site_path(ap, r, NONE, bp), c))
            .filter(|(p, _)| *p != best && cm.path_rtt(p).is_some_and(|r| f64::from(r) <= rtt_limit))
            .filter(|(p, _)| cm.quality(p).is_some_and(|q| v.clearly_meets(&q)))
            .min_by(|x, y| x.1.total_cmp(&y.1))
    }

    /// Writes row `ap`'s routes (indexed by site) and remembers each backup for hysteresis;
    /// returns whether a remembered backup changed.
    #[inline(always)]
    fn assemble(
        &self,
        hcfg: Option<&HysteresisConfig>,
        (ap, i): (usize, usize),
        chosen: &[Chosen],
        backups: Option<&BackupResult>,
        out: &mut [PairRoute],
        mut mem: Option<&mut [PairMemory]>,
    ) -> bool {
        let mut moved = false;
        let a = self.order[ap] as usize;
        let (n, np) = (self.g.n, self.g.np());
        let chosen = &chosen[i * n..(i + 1) * n];
        // By destination site, like `choose`: the output and memory rows are written in order.
        for (b, &bp) in self.pos.iter().enumerate() {
            let bp = bp as usize;
            let (primary, primary_cost, reason) = chosen[bp];
            if primary.is_none() {
                out[b] = PairRoute::UNREACHABLE;
                continue;
            }
            let (mut backup, mut backup_cost, mut disjoint) = (Path::NONE, INF, false);
            if let Some(bk) = backups {
                let i = i * np + bp;
                if bk.cost[i].is_finite() {
                    let (r1, r2) = (bk.r1[i], if bk.r1[i] == NONE { NONE } else { bk.r2[i] });
                    (backup, backup_cost, disjoint) = (self.site_path(ap, r1, r2, bp), bk.cost[i], true);
                } else if let Some((p, c)) = self.partial_backup(a, b, &primary) {
                    (backup, backup_cost) = (p, c);
                }
            }
            if let (Some(hc), Some(mem)) = (hcfg, mem.as_deref_mut()) {
                // Backups are calm too: the previous one stays while it is usable, as disjoint
                // as the new one, and not worse by the switching margin.
                let old = mem[b].backup;
                if !old.is_none() && old != backup && old != primary {
                    let ev = self.cm.evaluate(&old);
                    let old_disjoint = old.overlap(&primary) == 0;
                    if ev.cost.is_finite()
                        && !ev.degraded
                        && (old_disjoint || !disjoint)
                        && ev.cost - backup_cost < hc.margin(ev.cost)
                    {
                        (backup, backup_cost, disjoint) = (old, ev.cost, old_disjoint);
                    }
                }
                if mem[b].backup != backup {
                    mem[b].backup = backup;
                    moved = true;
                }
            }
            out[b] = PairRoute {
                primary,
                primary_cost,
                backup,
                backup_cost,
                backup_disjoint: disjoint,
                reason,
            };
        }
        moved
    }

    /// When no fully disjoint backup exists: the path other than the primary that shares the
    /// fewest relays and links with it, cheapest among those. Brute force over the usable
    /// links of `a`; only pairs cut off from every disjoint path get here.
    fn partial_backup(&self, a: usize, b: usize, primary: &Path) -> Option<(Path, f32)> {
        let cm = self.cm;
        let mut best: Option<(usize, f32, Path)> = None;
        let mut offer = |p: Path| {
            if p == *primary {
                return;
            }
            let c = cm.path_cost(&p);
            if !c.is_finite() {
                return;
            }
            let o = p.overlap(primary);
            if best.is_none_or(|(bo, bc, _)| (o, c) < (bo, bc)) {
                best = Some((o, c, p));
            }
        };
        let (a16, b16) = (a as SiteIdx, b as SiteIdx);
        offer(Path::new(&[a16, b16]));
        for r1 in 0..self.g.n {
            if r1 == a || r1 == b || !cm.relay_ok(r1) || !cm.cost(a, r1).is_finite() {
                continue;
            }
            let r1_16 = r1 as SiteIdx;
            offer(Path::new(&[a16, r1_16, b16]));
            if self.max_relays < 2 {
                continue;
            }
            for r2 in 0..self.g.n {
                if r2 == a || r2 == b || r2 == r1 || !cm.relay_ok(r2) || !cm.cost(r1, r2).is_finite() {
                    continue;
                }
                offer(Path::new(&[a16, r1_16, r2 as SiteIdx, b16]));
            }
        }
        best.map(|(_, c, p)| (p, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;

    /// A mesh of `n` sites on a plane, costs the distance times 1–2 (so relays often win),
    /// some links down, some sites unable to relay or be an endpoint.
    fn plane(n: usize, seed: u64) -> CostMatrix {
        let mut state = seed;
        let mut unit = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f32 / (1u64 << 53) as f32
        };
        let at: Vec<(f32, f32)> = (0..n).map(|_| (unit() * 200.0, unit() * 100.0)).collect();
        let mut cost = vec![f32::INFINITY; n * n];
        for a in 0..n {
            for b in 0..n {
                let (dx, dy) = (at[a].0 - at[b].0, at[a].1 - at[b].1);
                if unit() > 0.03 {
                    cost[a * n + b] = (dx * dx + dy * dy).sqrt() * (1.0 + unit()) + 1.0;
                }
            }
        }
        let relay_ok = (0..n).map(|_| unit() > 0.1).collect();
        let endpoint_ok = (0..n).map(|_| unit() > 0.05).collect();
        CostMatrix::from_costs(n, cost, relay_ok, endpoint_ok, 2.0)
    }

    #[test]
    fn every_build_of_the_search_agrees_to_the_bit() {
        // A CPU without AVX2 or AVX-512 runs its best build for the higher caps too, and
        // compares it with itself.
        let cfg = PathConfig {
            max_relays: 2,
            threads: 1,
        };
        for (n, seed) in [(9, 1), (70, 2), (150, 3)] {
            let cm = plane(n, seed);
            let fast = compute_routes(&cm, &cfg, None);
            for cap in [Isa::Avx2, Isa::Baseline] {
                kernels::ISA_CAP.with(|c| c.set(cap));
                let slower = compute_routes(&cm, &cfg, None);
                kernels::ISA_CAP.with(|c| c.set(Isa::Avx512));
                assert_eq!(fast, slower, "{n} sites, {cap:?} build");
            }
            let relayed = fast
                .pairs()
                .iter()
                .filter(|p| p.primary.relays().len() == 2)
                .count();
            assert!(
                n < 50 || relayed > 0,
                "{n} sites: the mesh should need two relays somewhere"
            );
        }
    }
}
