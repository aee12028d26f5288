//! The inner loops of the path search: dense, blocked, pruned, branch-free.
//!
//! Everything here works on a cost matrix already renumbered for locality
//! (see [`crate::locality`]). Destinations are cut into blocks of [`BLOCK`], and matrices that
//! the loops read at random rows are stored **block-major**: the lanes of row `r` in block `k`
//! sit at `(k·n + r)·BLOCK`, so one block's column slab of every row (`n·BLOCK` values, 256 KiB
//! at 1,000 sites) stays in cache while every source row is relaxed against it. Work is split
//! across threads by block, so each thread owns the slabs it writes.
//!
//! Per source row and block, relays are visited cheapest first, once, and bounded per
//! **sub-block** of [`SUB`] destinations (a block's 64 destinations span too much of the globe
//! for one bound to prune well; eight sites near each other do):
//! - `L[a][r] ≥` the block's worst current cost: no later relay can help, so stop;
//! - `L[a][r] + min_{b∈sub-block} K[r][b] ≥` the sub-block's worst: skip that sub-block. The
//!   eight tests of a relay are one vector compare and a bit mask; only the sub-blocks whose
//!   bit is set are relaxed. Relays are tested a chunk at a time, without a branch, and the
//!   bounds are refreshed between chunks (see [`walk`]).
//!
//! The loops over a sub-block run exactly [`SUB`] times over fixed-size arrays and update with
//! bit-mask selects rather than branches: LLVM turns them into SIMD compares and blends (costs
//! and indices are both 32 bits wide, so they share lanes). A loop over a slice of dynamic
//! bounds would not vectorise (it compiled to scalar code with branches, 3× slower). Padding
//! lanes (past the last site) and the diagonal read `INFINITY` as a source and hold
//! `NEG_INFINITY` while accumulating, so they never win and never loosen a bound.

// Lanes index several same-length arrays at once; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]

use crate::matrix::CostMatrix;
use crate::paths::{BLOCK, SUB};

/// Sub-blocks per block.
const SUBS: usize = BLOCK / SUB;
const _: () = assert!(SUB == 8 && SUBS == 8, "the reductions are written for 8 × 8");

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

#[inline(always)]
fn fmax(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

#[inline(always)]
fn fmin(a: f32, b: f32) -> f32 {
    if a < b { a } else { b }
}

/// The largest of eight values, folded as a tree: a chain of `max` would be eight deep (float
/// max is not reassociated without fast-math), and the next relay's bound waits on it.
#[inline(always)]
fn max8(x: &[f32]) -> f32 {
    let x: &[f32; 8] = x.try_into().expect("eight values");
    let a = [
        fmax(x[0], x[4]),
        fmax(x[1], x[5]),
        fmax(x[2], x[6]),
        fmax(x[3], x[7]),
    ];
    fmax(fmax(a[0], a[2]), fmax(a[1], a[3]))
}

/// The largest value of sub-block `q` of a block.
#[inline(always)]
fn sub_max(v: &Lanes<f32>, q: usize) -> f32 {
    max8(&v[q * SUB..(q + 1) * SUB])
}

/// Every sub-block's largest value: the bound each sub-block must be beaten by.
#[inline(always)]
fn sub_maxima(v: &Lanes<f32>) -> [f32; SUBS] {
    // A plain loop: `array::from_fn` was left out of line (and so compiled for the baseline)
    // in the AVX2 build.
    let mut out = [0.0; SUBS];
    for (q, o) in out.iter_mut().enumerate() {
        *o = sub_max(v, q);
    }
    out
}

/// The sub-blocks a relay may improve: bit `q` set when its first leg `l` plus its cheapest
/// continuation into sub-block `q` beats that sub-block's worst current cost.
#[inline(always)]
fn hopeful(l: f32, bmin: &[f32], worst: &[f32; SUBS]) -> u32 {
    // The sign bits of `l + bmin − worst`, gathered: LLVM makes this one vector subtraction
    // and a `movmskps` per four sub-blocks (a `bool` per sub-block compiled to shuffles). An
    // infinite bound minus an infinite worst is NaN, whose sign bit may be set: that only
    // costs a visit that finds nothing.
    let mut bits = 0;
    for q in 0..SUBS {
        bits |= ((l + bmin[q] - worst[q]).to_bits() >> 31) << q;
    }
    bits
}

/// Whether any lane of a sub-block would take a candidate `l + c`: one vector compare, no
/// early exit (a short-circuiting `any` compiles to a branch per lane).
#[inline(always)]
fn any_better(l: f32, c: &[f32; SUB], best: &[f32; SUB]) -> bool {
    let mut m = 0;
    for j in 0..SUB {
        m |= mask(l + c[j] < best[j]);
    }
    m != 0
}

/// Relays tested together before any is relaxed (see [`walk`]).
const CHUNK: usize = 32;

/// Walks one source's relays, cheapest first, over one block: stops once a first leg alone
/// reaches the block's worst cost, skips the sub-blocks a relay cannot improve, and hands
/// `visit` each other relay with the bit mask of its hopeful sub-blocks. The bounds come from
/// `acc` (the cost lanes being lowered, through `worst`) and are refreshed after every chunk
/// of [`CHUNK`] relays. `lr` gives an entry's first leg and relay.
///
/// A chunk's relays are all tested first, and those with a hopeful sub-block are listed
/// without a branch; then the list is visited. Whether a relay can help is close to a coin
/// toss, and a branch on it for every relay cost more than the tests.
#[inline(always)]
fn walk<T: Copy, A>(
    list: &[T],
    lr: impl Fn(T) -> (f32, u32),
    bmin: &[f32],
    acc: &mut A,
    worst: impl Fn(&A) -> [f32; SUBS],
    mut visit: impl FnMut(&mut A, T, u32),
) {
    let mut bound = worst(acc);
    let mut top = max8(&bound);
    let mut hits = [(0u8, 0u8); CHUNK];
    for chunk in list.chunks(CHUNK) {
        let mut len = 0;
        for (t, &x) in chunk.iter().enumerate() {
            let (l, r) = lr(x);
            let bits = hopeful(l, bounds(bmin, r as usize), &bound) & mask(l < top);
            hits[len] = (t as u8, bits as u8);
            len += usize::from(bits & 0xFF != 0);
        }
        for &(t, bits) in &hits[..len] {
            visit(acc, chunk[usize::from(t)], u32::from(bits));
        }
        // Relays come cheapest first and bounds only fall: past `top` once, past it for good.
        if lr(chunk[chunk.len() - 1]).0 >= top {
            break;
        }
        bound = worst(acc);
        top = max8(&bound);
    }
}

/// Pops the lowest set bit: the next sub-block to visit.
#[inline(always)]
fn next_sub(bits: &mut u32) -> Option<usize> {
    if *bits == 0 {
        return None;
    }
    let q = bits.trailing_zeros() as usize;
    *bits &= *bits - 1;
    Some(q)
}

/// The instruction sets the search is built for, least first. A group's work
/// (`paths::run_group`) and each of the three kernels are compiled three times — for the
/// x86-64 baseline, for x86-64-v3 (AVX2 and the BMI bit instructions: every x86 server CPU of
/// the last decade) and for x86-64-v4 (AVX-512) — and picked at run time: one binary runs
/// everywhere. With eight-lane vectors a sub-block is one instruction where SSE2 takes two, a
/// mask blend one where it takes three; AVX-512 adds mask registers, so a compare feeds a
/// blend or a masked move directly (the full search 5–10% faster at 200–1,000 sites on an
/// EPYC with it, though LLVM still prefers 256-bit vectors there). (The kernels keep builds of
/// their own: inlined whole into the group's, they came out 3–5% slower.) Every build gives
/// the same results to the bit: no float operation is fused or reordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    /// Whatever the target's baseline is (SSE2 on x86-64).
    Baseline,
    /// x86-64-v3: AVX2, BMI1/2, LZCNT, POPCNT.
    Avx2,
    /// x86-64-v4: the v3 set and AVX-512 F, VL, BW, DQ.
    Avx512,
}

/// The best build of the search this CPU runs (see [`Isa`]), found once.
pub(crate) fn isa() -> Isa {
    static FOUND: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    let found = *FOUND.get_or_init(detect_isa);
    #[cfg(test)]
    let found = found.min(ISA_CAP.with(std::cell::Cell::get));
    found
}

fn detect_isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let v3 = has!("avx2") && has!("bmi1") && has!("bmi2") && has!("lzcnt") && has!("popcnt");
        let v4 = v3 && has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512dq");
        if v4 {
            return Isa::Avx512;
        }
        if v3 {
            return Isa::Avx2;
        }
    }
    Isa::Baseline
}

#[cfg(test)]
thread_local! {
    /// The best build this thread's kernels may run, so a test can compare every build.
    pub(crate) static ISA_CAP: std::cell::Cell<Isa> = const { std::cell::Cell::new(Isa::Avx512) };
}

/// Defines `fn $name(args)`, which runs `$body(args)` in the best build this CPU runs (see
/// [`Isa`]). `$body` must be `#[inline(always)]`: each build then compiles it whole for its
/// own target features, and the baseline build is `$body` itself.
macro_rules! per_isa {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:path) => {
        $(#[$attr])*
        #[allow(unsafe_code)]
        $vis fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,popcnt,avx512f,avx512vl,avx512bw,avx512dq")]
            fn avx512($($arg: $ty),*) {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,bmi1,bmi2,lzcnt,popcnt")]
            fn avx2($($arg: $ty),*) {
                $body($($arg),*)
            }
            match $crate::kernels::isa() {
                // SAFETY: `isa` found every feature the AVX-512 build is compiled for.
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::Isa::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: `isa` found every feature the AVX2 build is compiled for.
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::Isa::Avx2 => unsafe { avx2($($arg),*) },
                _ => $body($($arg),*),
            }
        }
    };
}
pub(crate) use per_isa;

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

/// Sub-block `q` of a block's lanes, as a fixed-size array so that the loops over it are
/// unrolled and vectorised.
#[inline(always)]
fn sub<T>(v: &Lanes<T>, q: usize) -> &[T; SUB] {
    v[q * SUB..(q + 1) * SUB].try_into().expect("whole sub-blocks")
}

#[inline(always)]
fn sub_mut<T>(v: &mut Lanes<T>, q: usize) -> &mut [T; SUB] {
    (&mut v[q * SUB..(q + 1) * SUB])
        .try_into()
        .expect("whole sub-blocks")
}

/// Relaxes one sub-block of best and second-best paths with relay `r` (first leg `l`).
#[inline(always)]
fn relax_top2(
    l: f32,
    r: u32,
    c: &[f32; SUB],
    (h, m): (&mut [f32; SUB], &mut [u32; SUB]),
    (hs, ms): (&mut [f32; SUB], &mut [u32; SUB]),
) {
    for j in 0..SUB {
        let cand = l + c[j];
        let lt1 = mask(cand < h[j]);
        let lt2 = mask(cand < hs[j]);
        // Second best: the old best if beaten, else the candidate if it beats it; as costs,
        // `min(hs, max(h, cand))`, two instructions where selects take six.
        hs[j] = fmin(hs[j], fmax(h[j], cand));
        ms[j] = pick(lt1, m[j], pick(lt2, r, ms[j]));
        h[j] = fmin(h[j], cand);
        m[j] = pick(lt1, r, m[j]);
    }
}

/// Relaxes one sub-block of best paths with relay `r` (first leg `l`).
#[inline(always)]
fn relax_min(l: f32, r: u32, c: &[f32; SUB], best: &mut [f32; SUB], arg: &mut [u32; SUB]) {
    for j in 0..SUB {
        let cand = l + c[j];
        let lt = mask(cand < best[j]);
        best[j] = fmin(best[j], cand);
        arg[j] = pick(lt, r, arg[j]);
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
pub(crate) fn blocked<'a>(g: Grid, row: impl Fn(usize) -> &'a [f32], out: &mut Vec<f32>) {
    refill(out, g.n * g.np(), INF);
    for (k, slab) in out.chunks_mut(g.slab()).enumerate() {
        let lo = k * BLOCK;
        let hi = (lo + BLOCK).min(g.n);
        for r in 0..g.n {
            lanes_mut(slab, r)[..hi - lo].copy_from_slice(&row(r)[lo..hi]);
        }
    }
}

/// Empties `v` and fills it with `len` copies of `x`, keeping its allocation: buffers are
/// reused from one computation to the next, so the pages are already there.
pub(crate) fn refill<T: Copy>(v: &mut Vec<T>, len: usize, x: T) {
    v.clear();
    v.resize(len, x);
}

/// Minimum over each sub-block's lanes of each row of a block-major matrix, stored
/// `[(k·n + r)·SUBS + q]` so that one block's bounds are one small, cache-resident array and a
/// relay's bounds for every sub-block are adjacent.
pub(crate) fn block_minima(g: Grid, v: &[f32]) -> Vec<f32> {
    let mut out = vec![INF; g.n * g.nblk * SUBS];
    for (k, slab) in v.chunks(g.slab()).enumerate() {
        for r in 0..g.n {
            let row = lanes(slab, r);
            for q in 0..SUBS {
                // Padding lanes hold INFINITY, so they never lower the minimum.
                out[(k * g.n + r) * SUBS + q] = row[q * SUB..(q + 1) * SUB]
                    .iter()
                    .fold(INF, |m, &x| if x < m { x } else { m });
            }
        }
    }
    out
}

/// One block's sub-block minima for row `r`.
#[inline(always)]
fn bounds(bmin: &[f32], r: usize) -> &[f32] {
    &bmin[r * SUBS..(r + 1) * SUBS]
}

/// What every group of sources shares: the renumbered cost matrix, its block-major copy and
/// the sub-block minima of that copy.
pub(crate) struct Shared<'a> {
    pub g: Grid,
    pub cm: &'a CostMatrix,
    pub costs: &'a [f32],
    pub bmin_c: &'a [f32],
}

impl Shared<'_> {
    /// Block `k`'s slab of link costs and its sub-block minima.
    fn block(&self, k: usize) -> (&[f32], &[f32]) {
        let (n, w) = (self.g.n, self.g.slab());
        (
            &self.costs[k * w..(k + 1) * w],
            &self.bmin_c[k * n * SUBS..(k + 1) * n * SUBS],
        )
    }
}

/// Sources processed together, through every step, by one thread. Every step for a source
/// reads only that source's rows and the shared cost matrix, so a group goes from link costs to
/// routes without waiting for any other, and its working rows stay in cache between the steps
/// instead of making round trips through mesh-sized matrices. Thirty-two sources share each
/// visit to a block's slab of the cost matrix.
pub(crate) const GROUP: usize = 32;

/// A last relay worth a second relay in front of it, as seen from one source: everything the
/// scans need about the source's best paths to it, so that they read one list in order
/// instead of three rows at random.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Second {
    /// The best path to `r` plus the relay penalty: the cheapest first leg of `…→r→b`.
    pub l: f32,
    /// The last relay.
    pub r: u32,
    /// The relay of the best path to `r`.
    pub f1: u32,
    /// The relay of the second-best path to `r` (`NONE`: the direct link).
    pub f2: u32,
    /// The second-best path to `r` plus the relay penalty.
    pub l2: f32,
}

/// The search results of a group's sources: row `i` of each array (`np` long, by destination
/// position) belongs to the group's `i`-th source.
#[derive(Debug, Default)]
pub(crate) struct Steps {
    /// Relays usable from each source with their first leg (link + penalty), cheapest first.
    pub relays: Vec<Vec<(f32, u32)>>,
    /// Step 1: the best ≤1-relay path and its relay (`NONE`: direct), and the best one through
    /// a different relay or the direct link, so a backup can step around one excluded relay
    /// without searching again.
    pub h: Vec<f32>,
    pub m: Vec<u32>,
    pub hs: Vec<f32>,
    pub ms: Vec<u32>,
    /// Last relays worth a second relay in front, per source, cheapest first.
    pub second: Vec<Vec<Second>>,
    /// Step 2: the best ≤2-relay path and its last relay (`NONE`: step 1's path is best).
    pub best: Vec<f32>,
    pub arg: Vec<u32>,
    keys: SortKeys,
}

/// What the backup search starts from, per pair, written by the caller once primaries are
/// chosen: the primary's relays (`x1`, `x2`, [`ABSENT`] when missing), and the best path with
/// at most one relay that the backup may take (`init`, `NEG_INFINITY` for "no backup wanted")
/// with its relay (`init_r1`, `NONE` for the direct link).
#[derive(Debug, Default)]
pub(crate) struct BackupStart {
    pub x1: Vec<u32>,
    pub x2: Vec<u32>,
    pub init: Vec<f32>,
    pub init_r1: Vec<u32>,
}

/// Backup costs and relays (`r1` first, `r2` second or `NONE`), per pair.
#[derive(Debug, Default)]
pub(crate) struct BackupResult {
    pub cost: Vec<f32>,
    pub r1: Vec<u32>,
    pub r2: Vec<u32>,
}

/// A cost and a site as one integer that sorts like `(cost, site)`: costs are positive, so
/// their bit patterns sort like the numbers, and plain integers sort faster than tuples
/// compared through a key function.
#[inline]
fn key(c: f32, r: u32) -> u64 {
    (u64::from(c.to_bits()) << 32) | u64::from(r)
}

#[inline]
fn unkey(k: u64) -> (f32, u32) {
    (f32::from_bits((k >> 32) as u32), k as u32)
}

/// Reused buffers of [`sort_by_cost`]: the keys, and the other half of a radix sort's
/// ping-pong.
#[derive(Debug, Default)]
pub(crate) struct SortKeys {
    keys: Vec<u64>,
    spare: Vec<u64>,
}

/// Lists shorter than this are sorted by comparison: a radix sort's four 256-entry histograms
/// cost more than it saves on a few dozen keys.
const RADIX_MIN: usize = 64;

impl SortKeys {
    /// Sorts `keys` (made by [`key`], in increasing site order) like `sort_unstable`, and
    /// returns them: a least-significant-digit radix sort on the cost's four bytes, stable, so
    /// equal costs keep their sites in increasing order as the integers would sort them. A
    /// byte every key shares (the sign and most of the exponent, in a mesh whose costs span a
    /// few octaves) skips its pass. Sorting each source's relays, twice, took 8.5% of a
    /// computation at 500 sites with a comparison sort, 7.0% with this one (`perf`).
    fn sort(&mut self) -> &[u64] {
        let n = self.keys.len();
        debug_assert!(self.keys.windows(2).all(|w| (w[0] as u32) < (w[1] as u32)));
        if n < RADIX_MIN {
            self.keys.sort_unstable();
            return &self.keys;
        }
        let mut counts = [[0u32; 256]; 4];
        let (mut all, mut any) = (u32::MAX, 0);
        for &k in &self.keys {
            let c = (k >> 32) as u32;
            (all, any) = (all & c, any | c);
            for (d, count) in counts.iter_mut().enumerate() {
                count[((c >> (8 * d)) & 0xFF) as usize] += 1;
            }
        }
        refill(&mut self.spare, n, 0);
        for (d, count) in counts.iter_mut().enumerate() {
            if ((all ^ any) >> (8 * d)) & 0xFF == 0 {
                continue;
            }
            let mut at = 0;
            for x in count.iter_mut() {
                (*x, at) = (at, at + *x);
            }
            let shift = 32 + 8 * d;
            for &k in &self.keys {
                let b = ((k >> shift) & 0xFF) as usize;
                self.spare[count[b] as usize] = k;
                count[b] += 1;
            }
            std::mem::swap(&mut self.keys, &mut self.spare);
        }
        &self.keys
    }
}

/// Fills `out` with the sites `0..n` that `item` keeps (`(true, cost)`), cheapest first (ties
/// by site), each made into an entry by `make`; `keys` is a reused buffer. Sites are kept
/// without a branch: whether a site is relayed is close to a coin toss, and a filtered
/// `extend` mispredicted on every other one.
fn sort_by_cost<T>(
    keys: &mut SortKeys,
    n: usize,
    item: impl Fn(usize) -> (bool, f32),
    out: &mut Vec<T>,
    make: impl Fn(f32, u32) -> T,
) {
    let k = &mut keys.keys;
    k.clear();
    k.resize(n, 0);
    let mut len = 0;
    for r in 0..n {
        let (keep, c) = item(r);
        k[len] = key(c, r as u32);
        len += usize::from(keep);
    }
    k.truncate(len);
    out.clear();
    out.extend(keys.sort().iter().map(|&k| {
        let (c, r) = unkey(k);
        make(c, r)
    }));
}

/// Row `i` of a group array.
#[inline(always)]
fn row<T>(v: &[T], np: usize, i: usize) -> &[T] {
    &v[i * np..(i + 1) * np]
}

#[inline(always)]
fn row_mut<T>(v: &mut [T], np: usize, i: usize) -> &mut [T] {
    &mut v[i * np..(i + 1) * np]
}

per_isa! {
    /// Step 1: for every source of the group, the best and second-best paths with at most
    /// one relay. The best build the CPU runs (see [`Isa`]).
    pub(crate) fn one_relay(st: &mut Steps, sh: &Shared<'_>, s0: usize, rows: usize) => Steps::one_relay_body
}

per_isa! {
    /// Step 2: `best[a][b] = min(H[a][b], min_r2 (H[a][r2] + penalty) + C[r2][b])` over the
    /// relays of [`Steps::second_relays`], with the winning last relay in `arg` (`NONE` when no
    /// second relay helps; the first relay is then `H`'s relay from `a` to `r2`). The best
    /// build the CPU runs (see [`Isa`]).
    pub(crate) fn two_relay(st: &mut Steps, sh: &Shared<'_>, s0: usize, rows: usize) => Steps::two_relay_body
}

impl Steps {
    /// Sizes the rows for `rows` sources from `s0` and sorts their relays.
    #[inline(always)]
    pub(crate) fn prepare(&mut self, sh: &Shared<'_>, s0: usize, rows: usize) {
        let len = rows * sh.g.np();
        for v in [&mut self.m, &mut self.ms, &mut self.arg] {
            refill(v, len, NONE);
        }
        for v in [&mut self.h, &mut self.hs, &mut self.best] {
            refill(v, len, INF);
        }
        let cm = sh.cm;
        let p = cm.relay_penalty();
        self.relays.resize_with(rows, Vec::new);
        for (i, out) in self.relays.iter_mut().enumerate() {
            let row = cm.row(s0 + i);
            let usable = |r: usize| (row[r].is_finite() & cm.relay_ok(r), row[r] + p);
            sort_by_cost(&mut self.keys, row.len(), usable, out, |l, r| (l, r));
        }
    }

    #[inline(always)]
    fn one_relay_body(&mut self, sh: &Shared<'_>, s0: usize, rows: usize) {
        let (g, np) = (sh.g, sh.g.np());
        let Steps {
            relays, h, m, hs, ms, ..
        } = self;
        for k in 0..g.nblk {
            let (c_slab, bmin) = sh.block(k);
            for (i, relays) in relays.iter().enumerate().take(rows) {
                let s = s0 + i;
                let h = lanes_mut(row_mut(h, np, i), k);
                let m = lanes_mut(row_mut(m, np, i), k);
                let hs = lanes_mut(row_mut(hs, np, i), k);
                let ms = lanes_mut(row_mut(ms, np, i), k);
                *h = *lanes(c_slab, s);
                for j in g.dead_lanes(k, s) {
                    (h[j], hs[j]) = (NEG, NEG);
                }
                walk(
                    relays,
                    #[inline(always)]
                    |x| x,
                    bmin,
                    &mut (&mut *h, &mut *m, &mut *hs, &mut *ms),
                    #[inline(always)]
                    |(_, _, hs, _)| sub_maxima(hs),
                    #[inline(always)]
                    |(h, m, hs, ms), (l, r), mut bits| {
                        let c = lanes(c_slab, r as usize);
                        while let Some(q) = next_sub(&mut bits) {
                            relax_top2(
                                l,
                                r,
                                sub(c, q),
                                (sub_mut(h, q), sub_mut(m, q)),
                                (sub_mut(hs, q), sub_mut(ms, q)),
                            );
                        }
                    },
                );
                // From here on these rows are sources: dead lanes read as unreachable.
                for j in g.dead_lanes(k, s) {
                    (h[j], hs[j], m[j], ms[j]) = (INF, INF, NONE, NONE);
                }
            }
        }
    }

    /// The last relays worth a second relay in front of them, from each source: `r` whose
    /// best ≤1-relay path is relayed, cheapest first. A path `a→r1→r2→b` can only beat every
    /// ≤1-relay path when `a→r1→r2` beats the direct link `a→r2` (else `a→r2→b` is as good),
    /// so no other `r2` can help.
    #[inline(always)]
    pub(crate) fn second_relays(&mut self, sh: &Shared<'_>, rows: usize) {
        let (n, np, p) = (sh.g.n, sh.g.np(), sh.cm.relay_penalty());
        let Steps {
            h,
            m,
            hs,
            ms,
            second,
            keys,
            ..
        } = self;
        second.resize_with(rows, Vec::new);
        for (i, out) in second.iter_mut().enumerate() {
            let (h, m, hs, ms) = (row(h, np, i), row(m, np, i), row(hs, np, i), row(ms, np, i));
            let relayed = |r: usize| ((m[r] != NONE) & h[r].is_finite() & sh.cm.relay_ok(r), h[r] + p);
            sort_by_cost(keys, n, relayed, out, |l, r| {
                let r_ = r as usize;
                Second {
                    l,
                    r,
                    f1: m[r_],
                    f2: ms[r_],
                    l2: hs[r_] + p,
                }
            });
        }
    }

    #[inline(always)]
    fn two_relay_body(&mut self, sh: &Shared<'_>, s0: usize, rows: usize) {
        let (g, np) = (sh.g, sh.g.np());
        let Steps {
            h, second, best, arg, ..
        } = self;
        for k in 0..g.nblk {
            let (c_slab, bmin) = sh.block(k);
            for (i, second) in second.iter().enumerate().take(rows) {
                let a = s0 + i;
                let best = lanes_mut(row_mut(best, np, i), k);
                let arg = lanes_mut(row_mut(arg, np, i), k);
                *best = *lanes(row(h, np, i), k);
                for j in g.dead_lanes(k, a) {
                    best[j] = NEG;
                }
                walk(
                    second,
                    #[inline(always)]
                    |x| (x.l, x.r),
                    bmin,
                    &mut (&mut *best, &mut *arg),
                    #[inline(always)]
                    |(best, _)| sub_maxima(best),
                    #[inline(always)]
                    |(best, arg), Second { l, r, .. }, mut bits| {
                        let c = lanes(c_slab, r as usize);
                        while let Some(q) = next_sub(&mut bits) {
                            relax_min(l, r, sub(c, q), sub_mut(best, q), sub_mut(arg, q));
                        }
                    },
                );
                for j in g.dead_lanes(k, a) {
                    (best[j], arg[j]) = (INF, NONE);
                }
            }
        }
    }
}

/// Relaxes one sub-block of backups with last relay `r2`: `l1` is the first leg through the
/// best path to `r2` (relay `f1`), `l2` through the second best (relay `f2`, maybe `NONE`);
/// `d0` is the sub-block's first destination. Returns whether some lane had both first relays
/// excluded and must be searched in full.
#[inline(always)]
#[allow(clippy::type_complexity)]
fn relax_backup(
    (l1, l2, r2, f1, f2, d0): (f32, f32, u32, u32, u32, u32),
    (x1, x2): (&[u32; SUB], &[u32; SUB]),
    c: &[f32; SUB],
    (best, b1, b2): (&mut [f32; SUB], &mut [u32; SUB], &mut [u32; SUB]),
) -> bool {
    // Stored per lane, not OR-reduced in the loop: a reduction there keeps LLVM from
    // vectorising it.
    let mut slow = [0u32; SUB];
    for j in 0..SUB {
        let d = d0 + j as u32;
        let skip = mask(r2 == x1[j]) | mask(r2 == x2[j]);
        // A first relay is excluded when the primary uses it or it is the destination (a walk).
        let bad1 = mask(f1 == x1[j]) | mask(f1 == x2[j]) | mask(f1 == d);
        let bad2 = mask(f2 == x1[j]) | mask(f2 == x2[j]) | mask(f2 == d);
        let first = pickf(bad1, pickf(bad2, INF, l2), l1);
        let f = pick(bad1, f2, f1);
        slow[j] = bad1 & bad2 & !skip;
        let cand = pickf(skip, INF, first + c[j]);
        let lt = mask(cand < best[j]);
        best[j] = pickf(lt, cand, best[j]);
        // A direct first leg makes `r2` the only relay.
        let direct = mask(f == NONE);
        b1[j] = pick(lt, pick(direct, r2, f), b1[j]);
        b2[j] = pick(lt, pick(direct, NONE, r2), b2[j]);
    }
    slow.iter().fold(0, |acc, &x| acc | x) != 0
}

per_isa! {
    /// The backup search: per pair, the best path whose relays avoid the primary's and that is not
    /// the primary itself.
    ///
    /// [`BackupStart`] starts each pair at the best path with at most one relay that the backup
    /// may take — exact, found by the caller from the two best one-relay paths. What is left is
    /// two-relay paths `a→r1→r2→b`, and as in step 2 only the `r2` whose best path from `a` is
    /// relayed can give one that beats every one-relay path avoiding the primary: otherwise
    /// `a→r2→b` is as good and just as allowed. The first leg to `r2` is the best path to it whose
    /// relay is allowed here, else the second best (if that one is direct, the candidate is the
    /// one-relay path `a→r2→b`, already counted); lanes where both are excluded are searched in
    /// full. With at most one relay per path, the start is the answer.
    pub(crate) fn backups(
        sh: &Shared<'_>,
        st: &Steps,
        start: &BackupStart,
        group: (usize, usize, bool),
        out: &mut BackupResult,
    ) => backups_body
}

#[inline(always)]
fn backups_body(
    sh: &Shared<'_>,
    st: &Steps,
    start: &BackupStart,
    (s0, rows, two_relays): (usize, usize, bool),
    out: &mut BackupResult,
) {
    let (g, np) = (sh.g, sh.g.np());
    out.cost.clear();
    out.cost.extend_from_slice(&start.init[..rows * np]);
    out.r1.clear();
    out.r1.extend_from_slice(&start.init_r1[..rows * np]);
    refill(&mut out.r2, rows * np, NONE);
    if !two_relays {
        return;
    }
    for k in 0..g.nblk {
        let (c_slab, bmin) = sh.block(k);
        for i in 0..rows {
            let best = lanes_mut(row_mut(&mut out.cost, np, i), k);
            let b1 = lanes_mut(row_mut(&mut out.r1, np, i), k);
            let b2 = lanes_mut(row_mut(&mut out.r2, np, i), k);
            let x1 = lanes(row(&start.x1, np, i), k);
            let x2 = lanes(row(&start.x2, np, i), k);
            // `l` is the cheapest first leg to `r2`: a lower bound for every lane.
            walk(
                &st.second[i],
                #[inline(always)]
                |x| (x.l, x.r),
                bmin,
                &mut (&mut *best, &mut *b1, &mut *b2),
                #[inline(always)]
                |(best, ..)| sub_maxima(best),
                #[inline(always)]
                |(best, b1, b2), x, mut bits| {
                    let c = lanes(c_slab, x.r as usize);
                    while let Some(q) = next_sub(&mut bits) {
                        let (cq, bq) = (sub(c, q), sub(best, q));
                        // The cheapest first leg gives a lower bound: most visits end here.
                        if !any_better(x.l, cq, bq) {
                            continue;
                        }
                        let d0 = (k * BLOCK + q * SUB) as u32;
                        let slow = relax_backup(
                            (x.l, x.l2, x.r, x.f1, x.f2, d0),
                            (sub(x1, q), sub(x2, q)),
                            cq,
                            (sub_mut(best, q), sub_mut(b1, q), sub_mut(b2, q)),
                        );
                        if slow {
                            slow_lanes(
                                sh,
                                &st.relays[i],
                                (k, q, s0 + i, x.r),
                                (x.f1, x.f2),
                                (x1, x2),
                                (best, b1, b2),
                            );
                        }
                    }
                },
            );
        }
    }
}

/// Lanes where both stored first legs to `r2` are excluded: the best allowed first relay,
/// searched in full.
#[cold]
#[allow(clippy::type_complexity)]
fn slow_lanes(
    sh: &Shared<'_>,
    relays: &[(f32, u32)],
    (k, q, a, r2): (usize, usize, usize, u32),
    (f1, f2): (u32, u32),
    (x1, x2): (&Lanes<u32>, &Lanes<u32>),
    (best, b1, b2): (&mut Lanes<f32>, &mut Lanes<u32>, &mut Lanes<u32>),
) {
    let cm = sh.cm;
    let (r2u, p) = (r2 as usize, cm.relay_penalty());
    debug_assert!(relays.iter().all(|&(_, r)| r as usize != a));
    for j in q * SUB..(q + 1) * SUB {
        let b = k * BLOCK + j;
        let bad = |r: u32| r == x1[j] || r == x2[j] || r as usize == b;
        if b >= cm.len() || bad(r2) || !bad(f1) || !bad(f2) {
            continue;
        }
        let tail = p + cm.cost(r2u, b);
        // First relays cheapest first: none can help once its first leg alone, plus the
        // tail, reaches the best found.
        for &(l, r1) in relays {
            if l + tail >= best[j] {
                break;
            }
            if r1 == r2 || bad(r1) {
                continue;
            }
            let cand = l + cm.cost(r1 as usize, r2u) + tail;
            if cand < best[j] {
                (best[j], b1[j], b2[j]) = (cand, r1, r2);
            }
        }
    }
}

/// Runs `f` on every item on `threads` scoped threads, each taking the next item when it
/// finishes one: items differ in cost (some prune better than others), so a fixed deal would
/// leave one core idle at the end. Each thread works with a scratch from `scratch`; they are
/// handed back, so that the caller can keep them for the next run.
pub(crate) fn parallel_rows<R: Send, S: Send>(
    rows: Vec<R>,
    threads: usize,
    scratch: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, R) + Sync,
) -> Vec<S> {
    if threads <= 1 || rows.len() <= 1 {
        let mut s = scratch();
        for (i, r) in rows.into_iter().enumerate() {
            f(&mut s, i, r);
        }
        return vec![s];
    }
    let queue = std::sync::Mutex::new(rows.into_iter().enumerate());
    let work = || {
        let mut s = scratch();
        loop {
            // A poisoned queue means another worker panicked; the scope re-raises it.
            let Some((i, r)) = queue.lock().ok().and_then(|mut q| q.next()) else {
                return s;
            };
            f(&mut s, i, r);
        }
    };
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut done = vec![work()];
        for t in others {
            match t.join() {
                Ok(s) => done.push(s),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        done
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_radix_sort_orders_keys_as_a_comparison_sort_does() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut keys = SortKeys::default();
        for n in [0, 1, 5, RADIX_MIN - 1, RADIX_MIN, 200, 1000] {
            for spread in [1.0f32, 40.0, 600.0] {
                // Costs quantised to 1/256 ms, as in the search: many ties among 1,000 sites.
                let costs: Vec<f32> = (0..n)
                    .map(|_| ((next() % 65_536) as f32 / 65_536.0 * spread * 256.0).round() / 256.0 + 1.0)
                    .collect();
                let mut want: Vec<u64> = (0..n).map(|r| key(costs[r], r as u32)).collect();
                keys.keys.clone_from(&want);
                want.sort_unstable();
                assert_eq!(keys.sort(), &want[..], "{n} keys over {spread} ms");
            }
        }
    }
}
