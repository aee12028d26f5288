//! The route engine: one call turns a world snapshot into the next route table.
//!
//! It owns what must survive between computations — hysteresis memory, the last table, the
//! version counter — and nothing else. Versions move only when a primary or backup path
//! changes, or when a pair's cost drifted past the refresh margin ([`RefreshConfig`]) while
//! its path stayed: agents are not woken by cost noise, yet the costs and voice quality they
//! serve do not go stale for as long as the paths stand. A table is never modified after it
//! is returned.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cost::{CostWeights, PriceBook};
use crate::error::TopologyError;
use crate::hysteresis::{HysteresisConfig, HysteresisState};
use crate::link::TimestampMs;
use crate::matrix::CostMatrix;
use crate::paths::{PathConfig, Scratch, compute_routes_in};
use crate::site::SiteId;
use crate::table::{Epoch, RouteTable, TableId, Version};
use crate::world::World;

/// Every knob of a computation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Link cost weights.
    pub cost: CostWeights,
    /// Optional egress prices.
    pub prices: PriceBook,
    /// Path search.
    pub paths: PathConfig,
    /// Path switching.
    pub hysteresis: HysteresisConfig,
    /// New versions for costs that drifted while the paths stayed.
    pub refresh: RefreshConfig,
}

impl EngineConfig {
    /// Checks every section.
    pub fn validate(&self) -> Result<(), TopologyError> {
        self.cost.validate()?;
        self.prices.validate()?;
        self.paths.validate()?;
        self.hysteresis.validate()?;
        self.refresh.validate()
    }
}

/// When a table whose paths did not change is published anyway, for its costs. A table
/// carries each path's cost and predicted voice quality (MOS), which media servers read to
/// place sessions; published on path changes alone, a pair whose round trip grew by 40 ms,
/// too little to move it, would report the old figures for as long as its path stood.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefreshConfig {
    /// Whether drifted costs are published at all. Default true.
    pub enabled: bool,
    /// A pair's primary cost has drifted once it moved by more than this share of the cost in
    /// the table in force (and `min_ms`). Default 0.1: noise moves a cost by a few percent.
    pub ratio: f64,
    /// ... and by more than this, ms of cost. Default 10.
    pub min_ms: f64,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            enabled: true,
            ratio: 0.1,
            min_ms: 10.0,
        }
    }
}

impl RefreshConfig {
    /// Refuses negative or absurd margins.
    pub fn validate(&self) -> Result<(), TopologyError> {
        crate::cost::check_range("refresh.ratio", self.ratio, 0.0, 10.0)?;
        crate::cost::check_range("refresh.min_ms", self.min_ms, 0.0, 1e6)
    }

    /// Whether a cost of `old` in the table in force, now `new`, has drifted: by more than
    /// both margins, or into or out of reach. Never when refreshing is off.
    pub fn drifted(&self, old: f64, new: f64) -> bool {
        if !self.enabled || old == new {
            return false;
        }
        if !old.is_finite() || !new.is_finite() {
            return true;
        }
        (new - old).abs() > (self.ratio * old.abs()).max(self.min_ms)
    }
}

/// The result of one computation.
#[derive(Debug, Clone)]
pub struct Computation {
    /// The table now in force (the previous one when nothing changed).
    pub table: RouteTable,
    /// Whether this computation produced a new version.
    pub changed: bool,
    /// A new version whose paths are the last one's: published for costs that drifted.
    pub costs_only: bool,
}

/// Computes route tables, one version after another.
#[derive(Debug, Clone)]
pub struct RouteEngine {
    cfg: EngineConfig,
    state: HysteresisState,
    last: Option<RouteTable>,
    epoch: Epoch,
    next_version: Version,
    scratch: Scratch,
    /// When the first computation ran: the hysteresis warm-up counts from it.
    started: Option<TimestampMs>,
    /// Every pair's primary cost in the last table returned, row-major: 4 bytes a pair, what
    /// a cost's drift is measured from (see [`RefreshConfig`]).
    published: Vec<f32>,
}

impl RouteEngine {
    /// An engine that will number its first table `(epoch, first_version)`; a restarted
    /// controller passes the version after the last one it published.
    pub fn new(cfg: EngineConfig, epoch: Epoch, first_version: Version) -> Result<Self, TopologyError> {
        cfg.validate()?;
        Ok(RouteEngine {
            cfg,
            state: HysteresisState::default(),
            last: None,
            epoch,
            next_version: first_version,
            scratch: Scratch::default(),
            started: None,
            published: Vec::new(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The last table returned.
    pub fn last(&self) -> Option<&RouteTable> {
        self.last.as_ref()
    }

    /// Hysteresis memory, for `explain`.
    pub fn hysteresis(&self) -> &HysteresisState {
        &self.state
    }

    /// Moves to a new fencing epoch (a new leadership term); the next table is a new version.
    pub fn set_epoch(&mut self, epoch: Epoch) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.last = None;
        }
    }

    /// Takes a new configuration for the computations to come (an operator's reload). The next
    /// computation publishes a new version, whose costs are the new weights'. Each pair's
    /// switching memory is kept (a new margin or cost does not make pairs forget where they
    /// are), unless the relay limit changed: then the memory starts afresh, as a new
    /// leader's does, since a remembered path may have more relays than are now allowed.
    /// Returns whether the memory was reset.
    pub fn reconfigure(&mut self, cfg: EngineConfig) -> Result<bool, TopologyError> {
        cfg.validate()?;
        let reset = cfg.paths.max_relays != self.cfg.paths.max_relays;
        if reset {
            self.state = HysteresisState::default();
        }
        self.cfg = cfg;
        self.last = None;
        Ok(reset)
    }

    /// Makes the next computation publish a new version even if no path changes: for changes
    /// agents must see that are not paths (a drain that moves no route still makes its site
    /// unready).
    pub fn invalidate(&mut self) {
        self.last = None;
    }

    /// Computes the next table from a world snapshot taken at `now`.
    pub fn compute(&mut self, world: &World, now: TimestampMs) -> Computation {
        self.state.align(&world.inventory);
        let cm = CostMatrix::build(world, &self.cfg.cost, &self.cfg.prices);
        let same_sites = self
            .last
            .as_ref()
            .is_some_and(|t| t.sites().iter().eq(world.inventory.sites().iter().map(|s| &s.id)));
        let previous = self.last.as_ref().filter(|_| same_sites).map(RouteTable::routes);
        let started = *self.started.get_or_insert(now);
        let warming = now.saturating_sub(started) < self.cfg.hysteresis.warmup_ms;
        let hysteresis = if warming {
            self.cfg.hysteresis.warming()
        } else {
            self.cfg.hysteresis.clone()
        };
        let published = previous.map(|_| (&self.cfg.refresh, self.published.as_slice()));
        let (routes, compared) = compute_routes_in(
            &cm,
            &self.cfg.paths,
            Some((&hysteresis, &mut self.state)),
            &mut self.scratch,
            previous,
            published,
        );
        let sites: Arc<[SiteId]> = match &self.last {
            Some(t) if same_sites => t.sites_arc(),
            _ => world.inventory.sites().iter().map(|s| s.id.clone()).collect(),
        };
        let mut costs_only = false;
        if let Some(last) = &self.last
            && compared.same_paths
        {
            if !compared.costs_drifted {
                let table = last.clone();
                self.scratch.recycle(routes);
                return Computation {
                    table,
                    changed: false,
                    costs_only: false,
                };
            }
            costs_only = true;
        }
        // The primary costs now in force: what the next computations' drift is measured from.
        self.published.clear();
        self.published
            .extend(routes.pairs().iter().map(|r| r.primary_cost));
        let id = TableId {
            epoch: self.epoch,
            version: self.next_version,
        };
        self.next_version = Version(self.next_version.0 + 1);
        let table = RouteTable::new(id, now, sites, routes, world.links.clone());
        self.last = Some(table.clone());
        Computation {
            table,
            changed: true,
            costs_only,
        }
    }
}
