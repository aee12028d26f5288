//! Route tables: immutable, versioned results of a computation, their diffs, and the slice of
//! one site that its agents receive.
//!
//! A table shares its rows and the link snapshot it was computed from through `Arc`s, so
//! handing it to many readers costs nothing; there is no method that changes it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cost::Quality;
use crate::error::TopologyError;
use crate::path::Path;
use crate::paths::{PairRoute, Reason, Routes};
use crate::site::SiteId;
use crate::world::LinkTable;

/// The leader's fencing number: in HA, the etcd revision of its leadership key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Epoch(pub u64);

/// A table's number within an epoch's sequence; only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Version(pub u64);

/// `(epoch, version)`: what an agent compares before applying a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct TableId {
    /// Fencing epoch.
    pub epoch: Epoch,
    /// Version.
    pub version: Version,
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch.0, self.version.0)
    }
}

/// One computed route table.
#[derive(Debug, Clone)]
pub struct RouteTable {
    id: TableId,
    computed_at_ms: u64,
    sites: Arc<[SiteId]>,
    routes: Arc<Routes>,
    links: Arc<LinkTable>,
}

/// One pair's route in names, for agents, `explain` and reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteEntry {
    /// Ingress site.
    pub src: SiteId,
    /// Egress site.
    pub dst: SiteId,
    /// The path in use.
    pub primary: Vec<SiteId>,
    /// Its cost, ms.
    pub primary_cost: f32,
    /// Its predicted quality.
    pub primary_quality: Quality,
    /// The backup, if any.
    pub backup: Option<Vec<SiteId>>,
    /// The backup's cost, ms.
    pub backup_cost: Option<f32>,
    /// The backup's predicted quality.
    pub backup_quality: Option<Quality>,
    /// True when the backup shares no relay and no link with the primary.
    pub backup_disjoint: bool,
    /// Why the primary was chosen.
    pub reason: Reason,
}

impl RouteTable {
    /// Wraps computed routes. `sites` names the dense indices; `links` is the snapshot the
    /// routes were computed from (used for quality).
    pub fn new(
        id: TableId,
        computed_at_ms: u64,
        sites: Arc<[SiteId]>,
        routes: Routes,
        links: Arc<LinkTable>,
    ) -> Self {
        assert_eq!(
            sites.len(),
            routes.len(),
            "routes are indexed by the table's sites"
        );
        RouteTable {
            id,
            computed_at_ms,
            sites,
            routes: Arc::new(routes),
            links,
        }
    }

    /// `(epoch, version)`.
    pub fn id(&self) -> TableId {
        self.id
    }

    /// When it was computed, ms since the Unix epoch.
    pub fn computed_at_ms(&self) -> u64 {
        self.computed_at_ms
    }

    /// The sites, in dense-index order.
    pub fn sites(&self) -> &[SiteId] {
        &self.sites
    }

    pub(crate) fn sites_arc(&self) -> Arc<[SiteId]> {
        self.sites.clone()
    }

    /// The dense routes.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    fn index(&self, id: &SiteId) -> Result<usize, TopologyError> {
        self.sites
            .iter()
            .position(|s| s == id)
            .ok_or_else(|| TopologyError::UnknownSite(id.clone()))
    }

    fn names(&self, p: &Path) -> Vec<SiteId> {
        p.sites()
            .iter()
            .map(|&i| self.sites[usize::from(i)].clone())
            .collect()
    }

    /// Predicted quality of a path on the snapshot this table was computed from.
    pub fn quality(&self, p: &Path) -> Quality {
        Quality::of_path(
            p.links()
                .filter_map(|(a, b)| self.links.get(a, b).map(|v| &v.metrics)),
        )
    }

    fn entry_at(&self, a: usize, b: usize) -> Option<RouteEntry> {
        let r = self.routes.get(a, b);
        if r.primary.is_none() {
            return None;
        }
        let backup = (!r.backup.is_none()).then_some(&r.backup);
        Some(RouteEntry {
            src: self.sites[a].clone(),
            dst: self.sites[b].clone(),
            primary: self.names(&r.primary),
            primary_cost: r.primary_cost,
            primary_quality: self.quality(&r.primary),
            backup: backup.map(|p| self.names(p)),
            backup_cost: backup.map(|_| r.backup_cost),
            backup_quality: backup.map(|p| self.quality(p)),
            backup_disjoint: r.backup_disjoint,
            reason: r.reason,
        })
    }

    /// The route from `src` to `dst` (`None` when unreachable).
    pub fn entry(&self, src: &SiteId, dst: &SiteId) -> Result<Option<RouteEntry>, TopologyError> {
        Ok(self.entry_at(self.index(src)?, self.index(dst)?))
    }

    /// Every route out of one site: what that site's agents receive.
    pub fn site_table(&self, src: &SiteId) -> Result<SiteTable, TopologyError> {
        let a = self.index(src)?;
        Ok(SiteTable {
            id: self.id,
            computed_at_ms: self.computed_at_ms,
            src: src.clone(),
            rows: (0..self.sites.len())
                .filter_map(|b| self.entry_at(a, b))
                .collect(),
        })
    }

    /// Pairs whose primary or backup differ between `self` (before) and `next` (after), matched
    /// by site id so that tables over different inventories compare.
    pub fn diff(&self, next: &RouteTable) -> TableDiff {
        let same_sites = Arc::ptr_eq(&self.sites, &next.sites) || self.sites == next.sites;
        let mut changes = Vec::new();
        if same_sites {
            let n = self.sites.len();
            for a in 0..n {
                for b in 0..n {
                    let (x, y) = (self.routes.get(a, b), next.routes.get(a, b));
                    if x.primary != y.primary || x.backup != y.backup {
                        changes.push(self.change(Some((a, b)), next, Some((a, b)), x, y));
                    }
                }
            }
        } else {
            let index: HashMap<&SiteId, usize> = next.sites.iter().enumerate().map(|(i, s)| (s, i)).collect();
            let map: Vec<Option<usize>> = self.sites.iter().map(|s| index.get(s).copied()).collect();
            let back: HashMap<&SiteId, usize> = self.sites.iter().enumerate().map(|(i, s)| (s, i)).collect();
            let none = PairRoute {
                primary: Path::NONE,
                primary_cost: f32::INFINITY,
                backup: Path::NONE,
                backup_cost: f32::INFINITY,
                backup_disjoint: false,
                reason: Reason::NoRoute,
            };
            for a in 0..next.sites.len() {
                for b in 0..next.sites.len() {
                    let old = back
                        .get(&next.sites[a])
                        .zip(back.get(&next.sites[b]))
                        .map(|(&x, &y)| (x, y));
                    let x = old.map_or(&none, |(x, y)| self.routes.get(x, y));
                    let y = next.routes.get(a, b);
                    let names_x = old.map(|_| self.names(&x.primary)).unwrap_or_default();
                    let names_xb = old.map(|_| self.names(&x.backup)).unwrap_or_default();
                    if names_x != next.names(&y.primary) || names_xb != next.names(&y.backup) {
                        changes.push(self.change(old, next, Some((a, b)), x, y));
                    }
                }
            }
            for a in 0..self.sites.len() {
                for b in 0..self.sites.len() {
                    if (map[a].is_none() || map[b].is_none()) && !self.routes.get(a, b).primary.is_none() {
                        changes.push(self.change(Some((a, b)), next, None, self.routes.get(a, b), &none));
                    }
                }
            }
        }
        TableDiff {
            from: self.id,
            to: next.id,
            changes,
        }
    }

    /// The pairs whose primary changed between `self` (before) and `next`, for a journal that
    /// keeps only its newest rows: every change is counted, only the last `keep` (in the order
    /// of [`RouteTable::diff`]) are named. A mass reroute of a 1,000-site mesh moves up to a
    /// million pairs; naming each would allocate for every one. Tables over the same sites
    /// (every table of a running controller) are compared in place.
    pub fn primary_changes(&self, next: &RouteTable, keep: usize) -> PrimaryChanges {
        let same_sites = Arc::ptr_eq(&self.sites, &next.sites) || self.sites == next.sites;
        if !same_sites {
            let diff = self.diff(next);
            let backup_only = diff.changes.len() - diff.primary_changes();
            let mut changes: Vec<RowChange> = diff
                .changes
                .into_iter()
                .filter(RowChange::primary_changed)
                .collect();
            let total = changes.len();
            changes.drain(..total.saturating_sub(keep));
            return PrimaryChanges {
                total,
                backup_only,
                changes,
            };
        }
        // One pass: count every change, remember where the last `keep` were.
        let (mut total, mut backup_only) = (0usize, 0usize);
        let mut last = std::collections::VecDeque::with_capacity(keep.min(4_096));
        for (i, (x, y)) in self.routes.pairs().iter().zip(next.routes.pairs()).enumerate() {
            if x.primary != y.primary {
                total += 1;
                if keep > 0 {
                    if last.len() == keep {
                        last.pop_front();
                    }
                    last.push_back(i);
                }
            } else if x.backup != y.backup {
                backup_only += 1;
            }
        }
        let n = self.sites.len();
        let pairs = (self.routes.pairs(), next.routes.pairs());
        let changes = last
            .into_iter()
            .map(|i| {
                let pair = Some((i / n, i % n));
                self.change(pair, next, pair, &pairs.0[i], &pairs.1[i])
            })
            .collect();
        PrimaryChanges {
            total,
            backup_only,
            changes,
        }
    }

    fn change(
        &self,
        old: Option<(usize, usize)>,
        next: &RouteTable,
        new: Option<(usize, usize)>,
        x: &PairRoute,
        y: &PairRoute,
    ) -> RowChange {
        let (src, dst) = match (new, old) {
            (Some((a, b)), _) => (next.sites[a].clone(), next.sites[b].clone()),
            (None, Some((a, b))) => (self.sites[a].clone(), self.sites[b].clone()),
            (None, None) => unreachable!("a change has at least one side"),
        };
        let opt = |t: &RouteTable, p: &Path| (!p.is_none()).then(|| t.names(p));
        RowChange {
            src,
            dst,
            primary_before: opt(self, &x.primary),
            primary_after: opt(next, &y.primary),
            backup_before: opt(self, &x.backup),
            backup_after: opt(next, &y.backup),
            cost_before: x.primary_cost.is_finite().then_some(x.primary_cost),
            cost_after: y.primary_cost.is_finite().then_some(y.primary_cost),
            reason: y.reason,
        }
    }
}

/// A table in counts, for metrics and dashboards: how the mesh is routed (direct, through one
/// or two relays, not at all), how well the pairs are protected, and why pairs switched in it.
/// Pairs are ordered pairs of distinct endpoints (active sites, drained ones included: they
/// keep their rows).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSummary {
    /// Pairs on their direct link.
    pub direct: usize,
    /// Pairs through one relay.
    pub one_relay: usize,
    /// Pairs through two relays.
    pub two_relays: usize,
    /// Pairs with no usable path: an outage for the sessions that need them.
    pub unreachable: usize,
    /// Routed pairs whose backup shares no relay and no link with the primary.
    pub backup_disjoint: usize,
    /// Routed pairs whose backup overlaps the primary (no disjoint path exists).
    pub backup_partial: usize,
    /// Routed pairs with no backup at all: one failure away from `unreachable`.
    pub backup_none: usize,
    /// Pairs that switched path in this table, by [`crate::hysteresis::SwitchReason::label`].
    pub switched: Vec<(&'static str, usize)>,
}

impl RouteTable {
    /// Counts the table's routes between the sites `endpoints` marks (indexed like
    /// [`RouteTable::sites`]; a site past its end counts as no endpoint).
    pub fn summary(&self, endpoints: &[bool]) -> TableSummary {
        let n = self.sites.len();
        let mut s = TableSummary {
            switched: crate::hysteresis::SwitchReason::LABELS
                .iter()
                .map(|&l| (l, 0))
                .collect(),
            ..TableSummary::default()
        };
        let is_end = |i: usize| endpoints.get(i).copied().unwrap_or(false);
        for a in (0..n).filter(|&a| is_end(a)) {
            for b in (0..n).filter(|&b| b != a && is_end(b)) {
                let r = self.routes.get(a, b);
                match r.primary.relays().len() {
                    _ if r.primary.is_none() => s.unreachable += 1,
                    0 => s.direct += 1,
                    1 => s.one_relay += 1,
                    _ => s.two_relays += 1,
                }
                if r.primary.is_none() {
                    continue;
                }
                match (r.backup.is_none(), r.backup_disjoint) {
                    (true, _) => s.backup_none += 1,
                    (false, true) => s.backup_disjoint += 1,
                    (false, false) => s.backup_partial += 1,
                }
                if let Reason::Switched(why) = r.reason
                    && let Some(e) = s.switched.iter_mut().find(|(l, _)| *l == why.label())
                {
                    e.1 += 1;
                }
            }
        }
        s
    }
}

/// The routes out of one site, as its agents receive them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteTable {
    /// The table's `(epoch, version)`.
    pub id: TableId,
    /// When it was computed, ms since the Unix epoch.
    pub computed_at_ms: u64,
    /// The site these rows start from.
    pub src: SiteId,
    /// One row per reachable destination.
    pub rows: Vec<RouteEntry>,
}

/// One pair that differs between two tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowChange {
    /// Ingress site.
    pub src: SiteId,
    /// Egress site.
    pub dst: SiteId,
    /// Primary before (`None`: unreachable or new pair).
    pub primary_before: Option<Vec<SiteId>>,
    /// Primary after.
    pub primary_after: Option<Vec<SiteId>>,
    /// Backup before.
    pub backup_before: Option<Vec<SiteId>>,
    /// Backup after.
    pub backup_after: Option<Vec<SiteId>>,
    /// Primary cost before, ms.
    pub cost_before: Option<f32>,
    /// Primary cost after, ms.
    pub cost_after: Option<f32>,
    /// Why the new primary was chosen.
    pub reason: Reason,
}

impl RowChange {
    /// Whether the primary path changed (not only the backup).
    pub fn primary_changed(&self) -> bool {
        self.primary_before != self.primary_after
    }
}

/// The pairs whose primary path differs between two tables, counted, the newest named (see
/// [`RouteTable::primary_changes`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PrimaryChanges {
    /// Pairs whose primary changed.
    pub total: usize,
    /// Pairs whose backup alone changed.
    pub backup_only: usize,
    /// The last of the primary changes, at most the number asked for, in table order.
    pub changes: Vec<RowChange>,
}

/// Every pair that differs between two tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableDiff {
    /// The older table.
    pub from: TableId,
    /// The newer table.
    pub to: TableId,
    /// Changed pairs, ordered by source then destination of the newer table.
    pub changes: Vec<RowChange>,
}

impl TableDiff {
    /// True when no primary and no backup changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Pairs whose primary changed.
    pub fn primary_changes(&self) -> usize {
        self.changes.iter().filter(|c| c.primary_changed()).count()
    }
}
