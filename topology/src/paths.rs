//! Path computation: for every ordered pair, the best path with at most `max_relays` relays,
//! a backup that shares no relay and no link with it where one exists, and hysteresis between
//! computations.
//!
//! # How it is fast
//! The search is two min-plus products over a dense `f32` matrix, written for the cache:
//! 1. `H1[s][b]`: the best and second-best paths from `s` to `b` with at most one relay (two
//!    candidates with distinct relays, so that a backup can route around an excluded relay
//!    without searching again);
//! 2. `best[a][b] = min(H1[a][b], min_r L[a][r] + H1[r][b])` where `L` is a link cost plus the
//!    relay penalty, `INFINITY` when `r` may not relay.
//!
//! Each row `a` is computed on its own (rows run on every core), one block of
//! [`BLOCK`] destinations at a time, with relays `r` visited in increasing `L[a][r]`. Two bounds
//! prune almost all of the cube: a relay cannot help a destination once `L[a][r]` alone reaches
//! the block's worst current cost, and it cannot help the block when `L[a][r]` plus the block's
//! cheapest continuation from `r` (precomputed per block) does not beat that worst cost. The
//! inner loop over a block is branch-free so that it compiles to SIMD.
//!
//! Walks that revisit a site (`a→r→a→b`) are never chosen: every link costs more than zero, so
//! such a walk costs more than the simple path inside it, which is always a candidate.

use std::num::NonZeroUsize;

use serde::{Deserialize, Serialize};

use crate::error::TopologyError;
use crate::hysteresis::{Decision, HysteresisConfig, HysteresisState, PairMemory, SwitchReason, decide};
use crate::matrix::CostMatrix;
use crate::path::Path;
use crate::site::SiteIdx;

/// Destinations handled together by the inner loop: wide enough for SIMD, small enough that
/// the block's worst cost stays a tight bound.
pub const BLOCK: usize = 32;

const NONE: u32 = u32::MAX;
const INF: f32 = f32::INFINITY;

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
        /// Consecutive computations it has won so far.
        streak: u32,
    },
    /// The pair switched path in this computation.
    Switched(SwitchReason),
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

/// Best ≤1-relay paths from every site, with a second-best through another relay.
struct OneRelay {
    h: Vec<f32>,
    m: Vec<u32>,
    hs: Vec<f32>,
    ms: Vec<u32>,
}

/// Per-thread buffers, reused across rows.
struct Scratch {
    relays: Vec<(f32, u32)>,
    best: Vec<f32>,
    arg: Vec<u32>,
    x1: Vec<u32>,
    x2: Vec<u32>,
    barg1: Vec<u32>,
    barg2: Vec<u32>,
    chosen: Vec<(Path, f32, Reason)>,
}

impl Scratch {
    fn new(n: usize) -> Self {
        Scratch {
            relays: Vec::with_capacity(n),
            best: vec![INF; n],
            arg: vec![NONE; n],
            x1: vec![NONE; n],
            x2: vec![NONE; n],
            barg1: vec![NONE; n],
            barg2: vec![NONE; n],
            chosen: vec![(Path::NONE, INF, Reason::NoRoute); n],
        }
    }
}

/// Computes every pair's primary and backup. With `hysteresis`, primaries follow the
/// hysteresis rules and the state is updated; without, the best path is always taken.
pub fn compute_routes(
    cm: &CostMatrix,
    cfg: &PathConfig,
    hysteresis: Option<(&HysteresisConfig, &mut HysteresisState)>,
) -> Routes {
    let n = cm.len();
    let threads = cfg.thread_count(n);
    let max_relays = cfg.max_relays.min(2);
    let nblk = n.div_ceil(BLOCK);
    let bmin_c = block_minima(n, nblk, |r| cm.row(r));
    let one = (max_relays >= 1).then(|| one_relay(cm, &bmin_c, threads));
    let bmin_h = match &one {
        Some(o) if max_relays == 2 => block_minima(n, nblk, |r| &o.h[r * n..(r + 1) * n]),
        _ => Vec::new(),
    };
    let mut pairs = vec![PairRoute::UNREACHABLE; n * n];
    let (hcfg, mems) = match hysteresis {
        Some((c, st)) => (Some(c), Some(st.rows_mut())),
        None => (None, None),
    };
    let mem_rows: Vec<Option<&mut [PairMemory]>> = match mems {
        Some(m) if m.len() == n * n => m.chunks_mut(n.max(1)).map(Some).collect(),
        _ => (0..n).map(|_| None).collect(),
    };
    let rows: Vec<(&mut [PairRoute], Option<&mut [PairMemory]>)> =
        pairs.chunks_mut(n.max(1)).zip(mem_rows).collect();
    let ctx = RowCtx {
        cm,
        n,
        max_relays,
        one: one.as_ref(),
        bmin_c: &bmin_c,
        bmin_h: &bmin_h,
        hcfg,
    };
    parallel_rows(
        rows,
        threads,
        || Scratch::new(n),
        |s, a, (out, mem)| ctx.row(s, a, out, mem),
    );
    Routes { n, pairs }
}

/// Minimum of each row over each block of destinations: the lower bound that prunes relays.
fn block_minima<'a>(n: usize, nblk: usize, row: impl Fn(usize) -> &'a [f32]) -> Vec<f32> {
    let mut out = vec![INF; n * nblk];
    for r in 0..n {
        for (k, chunk) in row(r).chunks(BLOCK).enumerate() {
            out[r * nblk + k] = chunk.iter().copied().fold(INF, f32::min);
        }
    }
    out
}

/// Relays usable from `a`, with their first-leg cost (link + penalty), cheapest first.
fn sorted_relays(cm: &CostMatrix, a: usize, out: &mut Vec<(f32, u32)>) {
    out.clear();
    let p = cm.relay_penalty();
    for (r, &c) in cm.row(a).iter().enumerate() {
        if c.is_finite() && cm.relay_ok(r) {
            out.push((c + p, r as u32));
        }
    }
    out.sort_unstable_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
}

fn block_max(v: &[f32]) -> f32 {
    v.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Step 1: for every source, the best and second-best paths with at most one relay.
fn one_relay(cm: &CostMatrix, bmin_c: &[f32], threads: usize) -> OneRelay {
    let n = cm.len();
    let nblk = n.div_ceil(BLOCK);
    let mut o = OneRelay {
        h: cm.row_major().to_vec(),
        m: vec![NONE; n * n],
        hs: vec![INF; n * n],
        ms: vec![NONE; n * n],
    };
    let rows: Vec<_> =
        o.h.chunks_mut(n.max(1))
            .zip(o.m.chunks_mut(n.max(1)))
            .zip(o.hs.chunks_mut(n.max(1)))
            .zip(o.ms.chunks_mut(n.max(1)))
            .collect();
    parallel_rows(
        rows,
        threads,
        || Vec::with_capacity(n),
        |relays, s, (((h, m), hs), ms)| {
            sorted_relays(cm, s, relays);
            // The diagonal must not loosen the block bound; it is reset below.
            h[s] = f32::NEG_INFINITY;
            hs[s] = f32::NEG_INFINITY;
            for k in 0..nblk {
                let lo = k * BLOCK;
                let hi = (lo + BLOCK).min(n);
                let (h, m, hs, ms) = (&mut h[lo..hi], &mut m[lo..hi], &mut hs[lo..hi], &mut ms[lo..hi]);
                let mut worst = block_max(hs);
                for &(l, r) in relays.iter() {
                    if l >= worst {
                        break;
                    }
                    if l + bmin_c[r as usize * nblk + k] >= worst {
                        continue;
                    }
                    let c = &cm.row(r as usize)[lo..hi];
                    // Branch-free top-2 update (compiles to SIMD selects).
                    for j in 0..c.len() {
                        let cand = l + c[j];
                        let lt1 = cand < h[j];
                        let lt2 = cand < hs[j];
                        hs[j] = if lt1 {
                            h[j]
                        } else if lt2 {
                            cand
                        } else {
                            hs[j]
                        };
                        ms[j] = if lt1 {
                            m[j]
                        } else if lt2 {
                            r
                        } else {
                            ms[j]
                        };
                        h[j] = if lt1 { cand } else { h[j] };
                        m[j] = if lt1 { r } else { m[j] };
                    }
                    worst = block_max(hs);
                }
            }
            h[s] = INF;
            hs[s] = INF;
            m[s] = NONE;
            ms[s] = NONE;
        },
    );
    o
}

/// Runs `f` on every row, rows dealt round-robin to `threads` scoped threads (round-robin
/// keeps the load even when some rows prune better than others).
fn parallel_rows<R: Send, S>(
    rows: Vec<R>,
    threads: usize,
    scratch: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, R) + Sync,
) {
    if threads <= 1 {
        let mut s = scratch();
        for (i, r) in rows.into_iter().enumerate() {
            f(&mut s, i, r);
        }
        return;
    }
    let mut lanes: Vec<Vec<(usize, R)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, r) in rows.into_iter().enumerate() {
        lanes[i % threads].push((i, r));
    }
    std::thread::scope(|scope| {
        for lane in lanes {
            let (f, scratch) = (&f, &scratch);
            scope.spawn(move || {
                let mut s = scratch();
                for (i, r) in lane {
                    f(&mut s, i, r);
                }
            });
        }
    });
}

struct RowCtx<'a> {
    cm: &'a CostMatrix,
    n: usize,
    max_relays: u8,
    one: Option<&'a OneRelay>,
    bmin_c: &'a [f32],
    bmin_h: &'a [f32],
    hcfg: Option<&'a HysteresisConfig>,
}

impl RowCtx<'_> {
    fn row(&self, s: &mut Scratch, a: usize, out: &mut [PairRoute], mut mem: Option<&mut [PairMemory]>) {
        let (cm, n) = (self.cm, self.n);
        if !cm.endpoint_ok(a) {
            if let Some(mem) = mem.as_deref_mut() {
                mem.iter_mut().for_each(|m| *m = PairMemory::default());
            }
            return;
        }
        sorted_relays(cm, a, &mut s.relays);
        self.primaries(s, a);

        // Hysteresis, then the reason for every chosen path.
        for b in 0..n {
            let candidate = if b != a && cm.endpoint_ok(b) && s.best[b].is_finite() {
                self.primary_path(s, a, b)
            } else {
                Path::NONE
            };
            let direct = cm.cost(a, b);
            let base = if candidate.is_none() {
                Reason::NoRoute
            } else if candidate.is_direct() {
                Reason::Direct
            } else if direct.is_finite() {
                Reason::RelayBeatsDirect { direct_cost: direct }
            } else {
                Reason::DirectUnusable
            };
            s.chosen[b] = match (self.hcfg, mem.as_deref_mut()) {
                (Some(hc), Some(mem)) => {
                    let m = &mut mem[b];
                    match decide(hc, m, candidate, s.best[b], |p| cm.evaluate(p)) {
                        Decision::Steady => (candidate, s.best[b], base),
                        Decision::Kept {
                            current_cost,
                            gain_needed,
                            streak,
                        } => (
                            m.current,
                            current_cost,
                            Reason::Kept {
                                candidate_cost: s.best[b],
                                gain_needed,
                                streak,
                            },
                        ),
                        Decision::Switched { path, reason } => {
                            (path, cm.path_cost(&path), Reason::Switched(reason))
                        }
                    }
                }
                _ => (candidate, s.best[b], base),
            };
        }

        self.backups(s, a);
        for b in 0..n {
            let (primary, primary_cost, reason) = s.chosen[b];
            if primary.is_none() {
                out[b] = PairRoute::UNREACHABLE;
                continue;
            }
            let (mut backup, mut backup_cost, mut disjoint) = (Path::NONE, INF, false);
            if self.max_relays >= 1 {
                if s.best[b].is_finite() {
                    let (a16, b16) = (a as SiteIdx, b as SiteIdx);
                    backup = match (s.barg1[b], s.barg2[b]) {
                        (NONE, _) => Path::new(&[a16, b16]),
                        (r1, NONE) => Path::new(&[a16, r1 as SiteIdx, b16]),
                        (r1, r2) => Path::new(&[a16, r1 as SiteIdx, r2 as SiteIdx, b16]),
                    };
                    backup_cost = s.best[b];
                    disjoint = true;
                } else if let Some((p, c)) = self.partial_backup(a, b, &primary) {
                    (backup, backup_cost) = (p, c);
                }
            }
            if let Some(mem) = mem.as_deref_mut() {
                mem[b].backup = backup;
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
    }

    /// Fills `s.best`/`s.arg` with the best cost from `a` and the first relay of 2-relay paths.
    fn primaries(&self, s: &mut Scratch, a: usize) {
        let (cm, n) = (self.cm, self.n);
        s.arg.iter_mut().for_each(|x| *x = NONE);
        let Some(one) = self.one else {
            s.best.copy_from_slice(cm.row(a));
            return;
        };
        s.best.copy_from_slice(&one.h[a * n..(a + 1) * n]);
        if self.max_relays < 2 {
            return;
        }
        let nblk = n.div_ceil(BLOCK);
        s.best[a] = f32::NEG_INFINITY;
        for k in 0..nblk {
            let lo = k * BLOCK;
            let hi = (lo + BLOCK).min(n);
            let (best, arg) = (&mut s.best[lo..hi], &mut s.arg[lo..hi]);
            let mut worst = block_max(best);
            for &(l, r) in s.relays.iter() {
                if l >= worst {
                    break;
                }
                let r_us = r as usize;
                if l + self.bmin_h[r_us * nblk + k] >= worst {
                    continue;
                }
                let h = &one.h[r_us * n + lo..r_us * n + hi];
                for j in 0..h.len() {
                    let cand = l + h[j];
                    let lt = cand < best[j];
                    best[j] = if lt { cand } else { best[j] };
                    arg[j] = if lt { r } else { arg[j] };
                }
                worst = block_max(best);
            }
        }
        s.best[a] = INF;
    }

    fn primary_path(&self, s: &Scratch, a: usize, b: usize) -> Path {
        let one = self.one;
        let (a16, b16) = (a as SiteIdx, b as SiteIdx);
        match s.arg[b] {
            NONE => match one.map_or(NONE, |o| o.m[a * self.n + b]) {
                NONE => Path::new(&[a16, b16]),
                r => Path::new(&[a16, r as SiteIdx, b16]),
            },
            r1 => match one.map_or(NONE, |o| o.m[r1 as usize * self.n + b]) {
                NONE => Path::new(&[a16, r1 as SiteIdx, b16]),
                r2 => Path::new(&[a16, r1 as SiteIdx, r2 as SiteIdx, b16]),
            },
        }
    }

    /// Fills `s.best` with each destination's best fully disjoint backup cost from `a` (given
    /// the chosen primaries in `s.chosen`), `s.barg1`/`s.barg2` with its relays.
    fn backups(&self, s: &mut Scratch, a: usize) {
        let (cm, n) = (self.cm, self.n);
        if self.max_relays == 0 {
            s.best.iter_mut().for_each(|x| *x = INF);
            return;
        }
        for b in 0..n {
            let p = &s.chosen[b].0;
            let r = p.relays();
            s.x1[b] = r.first().map_or(NONE, |&x| u32::from(x));
            s.x2[b] = r.get(1).map_or(NONE, |&x| u32::from(x));
            s.barg1[b] = NONE;
            s.barg2[b] = NONE;
            // NEG_INFINITY marks "no backup wanted" and keeps the block bound tight.
            s.best[b] = if p.is_none() {
                f32::NEG_INFINITY
            } else if p.is_direct() {
                INF
            } else {
                cm.cost(a, b)
            };
        }
        let nblk = n.div_ceil(BLOCK);
        let bmin = if self.max_relays == 2 {
            self.bmin_h
        } else {
            self.bmin_c
        };
        let a32 = a as u32;
        for k in 0..nblk {
            let lo = k * BLOCK;
            let hi = (lo + BLOCK).min(n);
            let mut worst = block_max(&s.best[lo..hi]);
            for &(l, r1) in s.relays.iter() {
                if l >= worst {
                    break;
                }
                if l + bmin[r1 as usize * nblk + k] >= worst {
                    continue;
                }
                for b in lo..hi {
                    if s.best[b] == f32::NEG_INFINITY || r1 == s.x1[b] || r1 == s.x2[b] {
                        continue;
                    }
                    let (cont, r2) = self.continuation(r1 as usize, b, a32, s.x1[b], s.x2[b]);
                    let cand = l + cont;
                    if cand < s.best[b] {
                        s.best[b] = cand;
                        s.barg1[b] = r1;
                        s.barg2[b] = r2;
                    }
                }
                worst = block_max(&s.best[lo..hi]);
            }
        }
    }

    /// Cheapest way on from `r1` to `b` (direct, or through one relay) avoiding `a`, `x1`, `x2`.
    fn continuation(&self, r1: usize, b: usize, a: u32, x1: u32, x2: u32) -> (f32, u32) {
        let (cm, n) = (self.cm, self.n);
        let Some(one) = self.one.filter(|_| self.max_relays == 2) else {
            return (cm.cost(r1, b), NONE);
        };
        let excluded = |r: u32| r != NONE && (r == a || r == x1 || r == x2);
        let i = r1 * n + b;
        if !excluded(one.m[i]) {
            return (one.h[i], one.m[i]);
        }
        if !one.hs[i].is_finite() {
            return (INF, NONE);
        }
        if !excluded(one.ms[i]) {
            return (one.hs[i], one.ms[i]);
        }
        // Both stored candidates are excluded: search this continuation in full (rare).
        let p = cm.relay_penalty();
        let mut best = (cm.cost(r1, b), NONE);
        for r2 in 0..n {
            let r2_32 = r2 as u32;
            if r2 == r1 || r2 == b || excluded(r2_32) || !cm.relay_ok(r2) {
                continue;
            }
            let c = (cm.cost(r1, r2) + p) + cm.cost(r2, b);
            if c < best.0 {
                best = (c, r2_32);
            }
        }
        best
    }

    /// When no fully disjoint backup exists: the path other than the primary that shares the
    /// fewest relays and links with it, cheapest among those.
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
        for r1 in 0..self.n {
            if r1 == a || r1 == b || !cm.relay_ok(r1) || !cm.cost(a, r1).is_finite() {
                continue;
            }
            let r1_16 = r1 as SiteIdx;
            offer(Path::new(&[a16, r1_16, b16]));
            if self.max_relays < 2 {
                continue;
            }
            for r2 in 0..self.n {
                if r2 == a || r2 == b || r2 == r1 || !cm.relay_ok(r2) || !cm.cost(r1, r2).is_finite() {
                    continue;
                }
                offer(Path::new(&[a16, r1_16, r2 as SiteIdx, b16]));
            }
        }
        best.map(|(_, c, p)| (p, c))
    }
}
