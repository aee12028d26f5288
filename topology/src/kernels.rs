//! The inner loops of the path search: dense, blocked, pruned, branch-free.
//!
//! Everything here works on a cost matrix already renumbered for locality
//! (see [`crate::locality`]). Destinations are cut into blocks of [`BLOCK`], and matrices that
//! the loops read at random rows are stored **block-major**: the lanes of row `r` in block `k`
//! sit at `(k·n + r)·BLOCK`, so one block's column slab of every row (`n·BLOCK` values, 128 KiB
//! at 1,000 sites) stays in cache while every source row is relaxed against it. Work is split
//! across threads by block, so each thread owns the slabs it writes.
//!
//! Per source row and block, relays are visited cheapest first so that two bounds stop the
//! scan early:
//! - `L[a][r] ≥ worst`: no later relay can beat the block's worst current cost, so stop;
//! - `L[a][r] + min_{b∈block} K[r][b] ≥ worst`: this relay cannot help the block, so skip.
//!
//! The loops over a block run exactly [`BLOCK`] times over fixed-size arrays and update with
//! bit-mask selects rather than branches: LLVM turns them into SIMD compares and blends (costs
//! and indices are both 32 bits wide, so they share lanes). Padding lanes (past the last site)
//! and the diagonal read `INFINITY` as a source and hold `NEG_INFINITY` while accumulating, so
//! they never win and never loosen a bound.

// Lanes index several same-length arrays at once; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]

use crate::matrix::CostMatrix;
use crate::paths::BLOCK;

/// "No relay": a direct continuation.
pub(crate) const NONE: u32 = u32::MAX;
/// "No site": an absent primary relay; never equal to a site index nor to [`NONE`].
pub(crate) const ABSENT: u32 = u32::MAX - 1;
pub(crate) const INF: f32 = f32::INFINITY;
pub(crate) const NEG: f32 = f32::NEG_INFINITY;

type Lanes<T> = [T; BLOCK];

#[inline(always)]
fn mask(c: bool) -> u32 {
    (c as u32).wrapping_neg()
}

#[inline(always)]
fn pick(m: u32, a: u32, b: u32) -> u32 {
    (a & m) | (b & !m)
}

#[inline(always)]
fn pickf(m: u32, a: f32, b: f32) -> f32 {
    f32::from_bits(pick(m, a.to_bits(), b.to_bits()))
}

/// The largest value of a block. Eight independent running maxima vectorise (one chain of
/// `max` would not: float max is not reassociated without fast-math), then fold.
#[inline(always)]
fn block_max(v: &Lanes<f32>) -> f32 {
    let mut acc = [NEG; 8];
    for chunk in v.chunks_exact(8) {
        for i in 0..8 {
            acc[i] = if chunk[i] > acc[i] { chunk[i] } else { acc[i] };
        }
    }
    acc.iter().fold(NEG, |m, &x| if x > m { x } else { m })
}

/// Geometry of the blocked matrices.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    /// Sites.
    pub n: usize,
    /// Blocks of destinations.
    pub nblk: usize,
}

impl Grid {
    pub(crate) fn new(n: usize) -> Self {
        Grid {
            n,
            nblk: n.div_ceil(BLOCK),
        }
    }

    /// Row length once padded to whole blocks.
    pub(crate) fn np(&self) -> usize {
        self.nblk * BLOCK
    }

    /// Values in one block's slab.
    pub(crate) fn slab(&self) -> usize {
        (self.n * BLOCK).max(1)
    }

    /// Index of `(row r, destination b)` in a block-major matrix.
    #[inline]
    pub(crate) fn at(&self, r: usize, b: usize) -> usize {
        ((b / BLOCK) * self.n + r) * BLOCK + b % BLOCK
    }

    /// Lanes of `j` in block `k` that hold no destination (the diagonal `s`, the padding).
    fn dead_lanes(&self, k: usize, s: usize) -> impl Iterator<Item = usize> {
        let real = self.n.saturating_sub(k * BLOCK).min(BLOCK);
        let diag = s.checked_sub(k * BLOCK).filter(|&j| j < BLOCK);
        diag.into_iter().chain(real..BLOCK)
    }
}

fn lanes<T>(slab: &[T], r: usize) -> &Lanes<T> {
    slab[r * BLOCK..(r + 1) * BLOCK]
        .try_into()
        .expect("slabs hold whole rows of lanes")
}

fn lanes_mut<T>(slab: &mut [T], r: usize) -> &mut Lanes<T> {
    (&mut slab[r * BLOCK..(r + 1) * BLOCK])
        .try_into()
        .expect("slabs hold whole rows of lanes")
}

/// A row-major matrix (`n × n`) in block-major layout, padding lanes `INFINITY`.
pub(crate) fn blocked<'a>(g: Grid, row: impl Fn(usize) -> &'a [f32]) -> Vec<f32> {
    let mut out = vec![INF; g.n * g.np()];
    for (k, slab) in out.chunks_mut(g.slab()).enumerate() {
        let lo = k * BLOCK;
        let hi = (lo + BLOCK).min(g.n);
        for r in 0..g.n {
            lanes_mut(slab, r)[..hi - lo].copy_from_slice(&row(r)[lo..hi]);
        }
    }
    out
}

/// Minimum over each block's real lanes of each row of a block-major matrix, stored
/// `[k·n + r]` so one block's bounds are one small, cache-resident row.
pub(crate) fn block_minima(g: Grid, v: &[f32]) -> Vec<f32> {
    let mut out = vec![INF; g.n * g.nblk];
    for (k, slab) in v.chunks(g.slab()).enumerate() {
        for r in 0..g.n {
            // Padding lanes hold INFINITY, so they never lower the minimum.
            out[k * g.n + r] = lanes(slab, r).iter().fold(INF, |m, &x| if x < m { x } else { m });
        }
    }
    out
}

/// Relays usable from every site, with their first-leg cost (link + penalty), cheapest first.
pub(crate) fn sorted_relays(cm: &CostMatrix, threads: usize) -> Vec<Vec<(f32, u32)>> {
    let n = cm.len();
    let p = cm.relay_penalty();
    let mut out: Vec<Vec<(f32, u32)>> = vec![Vec::new(); n];
    parallel_rows(
        out.iter_mut().collect(),
        threads,
        || (),
        |_, a, row: &mut Vec<(f32, u32)>| {
            row.extend(
                cm.row(a)
                    .iter()
                    .enumerate()
                    .filter(|&(r, c)| c.is_finite() && cm.relay_ok(r))
                    .map(|(r, &c)| (c + p, r as u32)),
            );
            // Costs are positive, so their bit patterns sort like the numbers: one integer key.
            row.sort_unstable_by_key(|&(c, r)| (u64::from(c.to_bits()) << 32) | u64::from(r));
        },
    );
    out
}

/// Best ≤1-relay paths from every site, and the best one through a different relay (or the
/// direct link), so a backup can step around one excluded relay without searching again.
/// All four are block-major.
pub(crate) struct OneRelay {
    pub h: Vec<f32>,
    pub m: Vec<u32>,
    pub hs: Vec<f32>,
    pub ms: Vec<u32>,
}

/// Step 1: for every source, the best and second-best paths with at most one relay.
pub(crate) fn one_relay(
    g: Grid,
    costs: &[f32],
    relays: &[Vec<(f32, u32)>],
    bmin_c: &[f32],
    threads: usize,
) -> OneRelay {
    let n = g.n;
    let mut o = OneRelay {
        h: costs.to_vec(),
        m: vec![NONE; costs.len()],
        hs: vec![INF; costs.len()],
        ms: vec![NONE; costs.len()],
    };
    let w = g.slab();
    let slabs: Vec<_> =
        o.h.chunks_mut(w)
            .zip(o.m.chunks_mut(w))
            .zip(o.hs.chunks_mut(w))
            .zip(o.ms.chunks_mut(w))
            .collect();
    parallel_rows(
        slabs,
        threads,
        || (),
        |_, k, (((h_slab, m_slab), hs_slab), ms_slab)| {
            let c_slab = &costs[k * w..(k + 1) * w];
            let bmin = &bmin_c[k * n..(k + 1) * n];
            for s in 0..n {
                let (h, m) = (lanes_mut(h_slab, s), lanes_mut(m_slab, s));
                let (hs, ms) = (lanes_mut(hs_slab, s), lanes_mut(ms_slab, s));
                for j in g.dead_lanes(k, s) {
                    (h[j], hs[j]) = (NEG, NEG);
                }
                let mut worst = block_max(hs);
                for &(l, r) in &relays[s] {
                    if l >= worst {
                        break;
                    }
                    if l + bmin[r as usize] >= worst {
                        continue;
                    }
                    let c = lanes(c_slab, r as usize);
                    for j in 0..BLOCK {
                        let cand = l + c[j];
                        let lt1 = mask(cand < h[j]);
                        let lt2 = mask(cand < hs[j]);
                        // Second best: the old best if beaten, else the candidate if it beats it.
                        hs[j] = pickf(lt1, h[j], pickf(lt2, cand, hs[j]));
                        ms[j] = pick(lt1, m[j], pick(lt2, r, ms[j]));
                        h[j] = pickf(lt1, cand, h[j]);
                        m[j] = pick(lt1, r, m[j]);
                    }
                    worst = block_max(hs);
                }
                // From here on these rows are sources: dead lanes read as unreachable.
                for j in g.dead_lanes(k, s) {
                    (h[j], hs[j], m[j], ms[j]) = (INF, INF, NONE, NONE);
                }
            }
        },
    );
    o
}

/// Step 2: `best[a][b] = min(H[a][b], min_r L[a][r] + H[r][b])`, with the winning first relay
/// in `arg` (`NONE` when no second relay helps). Block-major.
pub(crate) fn two_relay(
    g: Grid,
    one: &OneRelay,
    relays: &[Vec<(f32, u32)>],
    bmin_h: &[f32],
    threads: usize,
) -> (Vec<f32>, Vec<u32>) {
    let n = g.n;
    let w = g.slab();
    let mut best = one.h.clone();
    let mut arg = vec![NONE; best.len()];
    let slabs: Vec<_> = best.chunks_mut(w).zip(arg.chunks_mut(w)).collect();
    parallel_rows(
        slabs,
        threads,
        || (),
        |_, k, (best_slab, arg_slab)| {
            let h_slab = &one.h[k * w..(k + 1) * w];
            let bmin = &bmin_h[k * n..(k + 1) * n];
            for a in 0..n {
                let (best, arg) = (lanes_mut(best_slab, a), lanes_mut(arg_slab, a));
                for j in g.dead_lanes(k, a) {
                    best[j] = NEG;
                }
                let mut worst = block_max(best);
                for &(l, r) in &relays[a] {
                    if l >= worst {
                        break;
                    }
                    if l + bmin[r as usize] >= worst {
                        continue;
                    }
                    let h = lanes(h_slab, r as usize);
                    for j in 0..BLOCK {
                        let cand = l + h[j];
                        let lt = mask(cand < best[j]);
                        best[j] = pickf(lt, cand, best[j]);
                        arg[j] = pick(lt, r, arg[j]);
                    }
                    worst = block_max(best);
                }
                for j in g.dead_lanes(k, a) {
                    (best[j], arg[j]) = (INF, NONE);
                }
            }
        },
    );
    (best, arg)
}

/// The backup search: per pair, the best path whose relays avoid the primary's (`x1`, `x2`,
/// [`ABSENT`] when missing) and the source itself, and that is not the direct link when the
/// primary is. `x1`, `x2` and `init` are row-major with the padded stride; `init` holds the
/// starting cost (an allowed path already known, `INFINITY`, or `NEG_INFINITY` for "no backup
/// wanted") and `init_r1` that path's relay.
pub(crate) struct Backups<'a> {
    pub g: Grid,
    pub cm: &'a CostMatrix,
    pub costs: &'a [f32],
    pub one: Option<&'a OneRelay>,
    pub bmin: &'a [f32],
    pub relays: &'a [Vec<(f32, u32)>],
    pub x1: &'a [u32],
    pub x2: &'a [u32],
    pub init: &'a [f32],
    /// The first relay of the path `init` costs (`NONE` for the direct link).
    pub init_r1: &'a [u32],
}

/// Backup costs and relays, block-major.
pub(crate) struct BackupResult {
    pub cost: Vec<f32>,
    pub r1: Vec<u32>,
    pub r2: Vec<u32>,
}

impl Backups<'_> {
    pub(crate) fn run(&self, threads: usize) -> BackupResult {
        let (g, w) = (self.g, self.g.slab());
        let len = g.n * g.np();
        let mut out = BackupResult {
            cost: vec![INF; len],
            r1: vec![NONE; len],
            r2: vec![NONE; len],
        };
        let slabs: Vec<_> = out
            .cost
            .chunks_mut(w)
            .zip(out.r1.chunks_mut(w))
            .zip(out.r2.chunks_mut(w))
            .collect();
        parallel_rows(
            slabs,
            threads,
            || (),
            |_, k, ((c_slab, b1_slab), b2_slab)| {
                for a in 0..g.n {
                    let row = a * g.np() + k * BLOCK..a * g.np() + (k + 1) * BLOCK;
                    let best = lanes_mut(c_slab, a);
                    best.copy_from_slice(&self.init[row.clone()]);
                    let (b1, b2) = (lanes_mut(b1_slab, a), lanes_mut(b2_slab, a));
                    b1.copy_from_slice(&self.init_r1[row.clone()]);
                    let x1: &Lanes<u32> = self.x1[row.clone()].try_into().expect("whole block");
                    let x2: &Lanes<u32> = self.x2[row].try_into().expect("whole block");
                    self.block(k, a, x1, x2, best, b1, b2);
                }
            },
        );
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &self,
        k: usize,
        a: usize,
        x1: &Lanes<u32>,
        x2: &Lanes<u32>,
        best: &mut Lanes<f32>,
        b1: &mut Lanes<u32>,
        b2: &mut Lanes<u32>,
    ) {
        let (n, w) = (self.g.n, self.g.slab());
        let bmin = &self.bmin[k * n..(k + 1) * n];
        let a32 = a as u32;
        let mut worst = block_max(best);
        for &(l, r1) in &self.relays[a] {
            if l >= worst {
                break;
            }
            if l + bmin[r1 as usize] >= worst {
                continue;
            }
            match self.one {
                None => {
                    let c = lanes(&self.costs[k * w..(k + 1) * w], r1 as usize);
                    for j in 0..BLOCK {
                        let skip = mask(r1 == x1[j]) | mask(r1 == x2[j]);
                        let cand = pickf(skip, INF, l + c[j]);
                        let lt = mask(cand < best[j]);
                        best[j] = pickf(lt, cand, best[j]);
                        b1[j] = pick(lt, r1, b1[j]);
                        b2[j] = pick(lt, NONE, b2[j]);
                    }
                }
                Some(one) => {
                    let slab = k * w..(k + 1) * w;
                    let r = r1 as usize;
                    let (h, m) = (lanes(&one.h[slab.clone()], r), lanes(&one.m[slab.clone()], r));
                    let (hs, ms) = (lanes(&one.hs[slab.clone()], r), lanes(&one.ms[slab], r));
                    // Stored per lane, not OR-reduced: a reduction here keeps LLVM from
                    // vectorising the loop.
                    let mut slow = [0u32; BLOCK];
                    for j in 0..BLOCK {
                        let skip = mask(r1 == x1[j]) | mask(r1 == x2[j]);
                        let bad_m = mask(m[j] == a32) | mask(m[j] == x1[j]) | mask(m[j] == x2[j]);
                        let bad_ms = mask(ms[j] == a32) | mask(ms[j] == x1[j]) | mask(ms[j] == x2[j]);
                        // The best continuation from r1 if allowed, else the second best.
                        let cont = pickf(bad_m, pickf(bad_ms, INF, hs[j]), h[j]);
                        let r2 = pick(bad_m, ms[j], m[j]);
                        slow[j] = bad_m & bad_ms & !skip;
                        let cand = pickf(skip, INF, l + cont);
                        let lt = mask(cand < best[j]);
                        best[j] = pickf(lt, cand, best[j]);
                        b1[j] = pick(lt, r1, b1[j]);
                        b2[j] = pick(lt, r2, b2[j]);
                    }
                    if slow.iter().any(|&x| x != 0) {
                        self.slow_lanes(k, a32, l, r1, (x1, x2), (m, ms), (best, b1, b2));
                    }
                }
            }
            worst = block_max(best);
        }
    }

    /// Lanes where both stored continuations from `r1` are excluded: search those in full.
    #[cold]
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn slow_lanes(
        &self,
        k: usize,
        a: u32,
        l: f32,
        r1: u32,
        (x1, x2): (&Lanes<u32>, &Lanes<u32>),
        (m, ms): (&Lanes<u32>, &Lanes<u32>),
        (best, b1, b2): (&mut Lanes<f32>, &mut Lanes<u32>, &mut Lanes<u32>),
    ) {
        let cm = self.cm;
        for j in 0..BLOCK {
            let b = k * BLOCK + j;
            let bad = |r: u32| r == a || r == x1[j] || r == x2[j];
            if b >= cm.len() || r1 == x1[j] || r1 == x2[j] || !bad(m[j]) || !bad(ms[j]) {
                continue;
            }
            let r1u = r1 as usize;
            let mut cont = (cm.cost(r1u, b), NONE);
            // Second relays cheapest first: none can help once its first leg alone costs as
            // much as the continuation found (link costs are positive).
            for &(l2, r2) in &self.relays[r1u] {
                if l2 >= cont.0 {
                    break;
                }
                if r2 as usize == b || bad(r2) {
                    continue;
                }
                let c = l2 + cm.cost(r2 as usize, b);
                if c < cont.0 {
                    cont = (c, r2);
                }
            }
            let cand = l + cont.0;
            if cand < best[j] {
                (best[j], b1[j], b2[j]) = (cand, r1, cont.1);
            }
        }
    }
}

/// Runs `f` on every item (a row or a block's slab), dealt round-robin to `threads` scoped
/// threads (round-robin keeps the load even when some items prune better than others).
pub(crate) fn parallel_rows<R: Send, S>(
    rows: Vec<R>,
    threads: usize,
    scratch: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, R) + Sync,
) {
    if threads <= 1 || rows.len() <= 1 {
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
