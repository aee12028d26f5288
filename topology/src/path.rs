//! A path: the site sequence media takes from ingress to egress, with at most two relays.
//!
//! `Path` is `Copy` and 10 bytes, so a million of them (every pair of a 1,000-site mesh) fit in
//! a flat array without a heap allocation each.

use std::fmt;

use crate::matrix::CostMatrix;
use crate::site::SiteIdx;

/// The most relays a path can hold (`max_relays` is 0, 1 or 2).
pub const MAX_RELAYS: usize = 2;

/// A site sequence `[src, relays…, dst]` of dense site indices; empty means "no path".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Path {
    hops: [SiteIdx; MAX_RELAYS + 2],
    len: u8,
}

impl Path {
    /// No path.
    pub const NONE: Path = Path {
        hops: [0; MAX_RELAYS + 2],
        len: 0,
    };

    /// A path through `relays` (`NONE`-terminated: `[r1, r2]` with `u32::MAX` for "no relay",
    /// as the path search records them), built in registers. The hot loops build a million
    /// paths a computation; a path assembled one hop at a time in memory and then read back
    /// whole stalls on store forwarding, which cost more than the rest of the work on a pair.
    #[inline]
    pub(crate) fn from_hops(a: SiteIdx, r1: u32, r2: u32, b: SiteIdx) -> Path {
        match (r1, r2) {
            (u32::MAX, _) => Path {
                hops: [a, b, 0, 0],
                len: 2,
            },
            (r1, u32::MAX) => Path {
                hops: [a, r1 as SiteIdx, b, 0],
                len: 3,
            },
            (r1, r2) => Path {
                hops: [a, r1 as SiteIdx, r2 as SiteIdx, b],
                len: 4,
            },
        }
    }

    /// Builds a path from 2 to 4 sites.
    ///
    /// # Panics
    /// When `sites` has fewer than 2 or more than 4 entries: callers build paths from the
    /// engine's own indices, so this is an invariant, never input.
    pub fn new(sites: &[SiteIdx]) -> Path {
        assert!(
            (2..=MAX_RELAYS + 2).contains(&sites.len()),
            "a path holds 2 to 4 sites"
        );
        let mut hops = [0; MAX_RELAYS + 2];
        hops[..sites.len()].copy_from_slice(sites);
        Path {
            hops,
            len: sites.len() as u8,
        }
    }

    /// True for "no path".
    pub fn is_none(&self) -> bool {
        self.len == 0
    }

    /// The sites, ingress first.
    pub fn sites(&self) -> &[SiteIdx] {
        &self.hops[..usize::from(self.len)]
    }

    /// The relay sites (empty for a direct path or no path).
    pub fn relays(&self) -> &[SiteIdx] {
        match self.len {
            0..=2 => &[],
            n => &self.hops[1..usize::from(n) - 1],
        }
    }

    /// Whether the path goes straight from ingress to egress.
    pub fn is_direct(&self) -> bool {
        self.len == 2
    }

    /// The directed links, in order.
    pub fn links(&self) -> impl Iterator<Item = (SiteIdx, SiteIdx)> + '_ {
        self.sites().windows(2).map(|w| (w[0], w[1]))
    }

    /// The same path with every index mapped (e.g. from one inventory to another).
    pub fn map(&self, f: impl Fn(SiteIdx) -> SiteIdx) -> Path {
        let mut p = *self;
        for h in &mut p.hops[..usize::from(self.len)] {
            *h = f(*h);
        }
        p
    }

    /// Relays plus links this path shares with another: 0 means fully disjoint.
    pub fn overlap(&self, other: &Path) -> usize {
        let relays = self
            .relays()
            .iter()
            .filter(|r| other.relays().contains(r))
            .count();
        let links = self.links().filter(|l| other.links().any(|m| m == *l)).count();
        relays + links
    }
}

impl fmt::Debug for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_none() {
            return f.write_str("Path(none)");
        }
        write!(f, "Path{:?}", self.sites())
    }
}

/// A path judged on the current matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathEval {
    /// Cost, `INFINITY` when a link is unusable or a relay may no longer relay.
    pub cost: f32,
    /// Whether any link of the path is degraded.
    pub degraded: bool,
    /// Standard error of the cost from the links' loss estimates, ms (0 when exact).
    pub sigma: f32,
    /// The part of the cost that comes from measured (uncertain) loss, ms.
    pub loss_cost: f32,
}

impl CostMatrix {
    /// The cost of a path on this matrix, in the same summation order as the search
    /// (`first + (second + third)`), so that equal paths have bit-identical costs.
    pub fn path_cost(&self, path: &Path) -> f32 {
        self.evaluate(path).cost
    }

    /// Cost and degradation of a path on this matrix.
    pub fn evaluate(&self, path: &Path) -> PathEval {
        let s = path.sites();
        if s.len() < 2 || s.iter().any(|&i| usize::from(i) >= self.len()) {
            return PathEval {
                cost: f32::INFINITY,
                degraded: false,
                sigma: 0.0,
                loss_cost: 0.0,
            };
        }
        if path.relays().iter().any(|&r| !self.relay_ok(usize::from(r))) {
            return PathEval {
                cost: f32::INFINITY,
                degraded: false,
                sigma: 0.0,
                loss_cost: 0.0,
            };
        }
        let c = |a: SiteIdx, b: SiteIdx| self.cost(usize::from(a), usize::from(b));
        let p = self.relay_penalty();
        let cost = match *s {
            [a, b] => c(a, b),
            [a, r, b] => (c(a, r) + p) + c(r, b),
            [a, r1, r2, b] => (c(a, r1) + p) + ((c(r1, r2) + p) + c(r2, b)),
            _ => f32::INFINITY,
        };
        let degraded = path
            .links()
            .any(|(a, b)| self.degraded(usize::from(a), usize::from(b)));
        // Links are measured independently: their errors add in quadrature.
        let sigma = path
            .links()
            .map(|(a, b)| self.cost_se(usize::from(a), usize::from(b)).powi(2))
            .sum::<f32>()
            .sqrt();
        let loss_cost = path
            .links()
            .map(|(a, b)| self.loss_cost(usize::from(a), usize::from(b)))
            .sum();
        PathEval {
            cost,
            degraded,
            sigma,
            loss_cost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_and_links_of_each_length() {
        let d = Path::new(&[0, 1]);
        let v2 = Path::new(&[0, 2, 3, 1]);
        assert!(d.relays().is_empty() && d.is_direct());
        assert_eq!(v2.relays(), &[2, 3]);
        assert_eq!(v2.links().collect::<Vec<_>>(), vec![(0, 2), (2, 3), (3, 1)]);
        assert!(Path::NONE.relays().is_empty());
    }

    #[test]
    fn overlap_counts_shared_relays_and_links() {
        let a = Path::new(&[0, 2, 1]);
        let b = Path::new(&[0, 2, 3, 1]);
        let c = Path::new(&[0, 4, 1]);
        assert_eq!(a.overlap(&b), 2); // relay 2 and link 0→2
        assert_eq!(a.overlap(&c), 0);
        assert_eq!(Path::new(&[0, 1]).overlap(&Path::new(&[0, 1])), 1);
    }
}
