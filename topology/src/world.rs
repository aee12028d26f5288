//! The world the engine routes over: the inventory, a dense table of link views, and drains.
//!
//! A `World` is a snapshot: the controller builds one per computation from its live link
//! states (`LinkState::view(now)`), and what-if builds modified copies of it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cost::LinkMetrics;
use crate::drain::DrainSet;
use crate::error::TopologyError;
use crate::link::{LinkHealth, LinkView};
use crate::site::{Inventory, Role, Site, SiteId, SiteIdx};

/// Dense `n × n` table of directed link views; `None` where a link has never been measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkTable {
    n: usize,
    cells: Vec<Option<LinkView>>,
}

impl LinkTable {
    /// A table for `n` sites with no link known.
    pub fn new(n: usize) -> Self {
        LinkTable {
            n,
            cells: vec![None; n * n],
        }
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.n
    }

    /// True for a table of no site.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The view of link `from → to`.
    pub fn get(&self, from: SiteIdx, to: SiteIdx) -> Option<&LinkView> {
        self.cells[usize::from(from) * self.n + usize::from(to)].as_ref()
    }

    /// Sets the view of link `from → to`; a self-link is ignored.
    pub fn set(&mut self, from: SiteIdx, to: SiteIdx, view: Option<LinkView>) {
        if from != to {
            self.cells[usize::from(from) * self.n + usize::from(to)] = view;
        }
    }

    /// Directed links by health, for metrics and dashboards: how much of the mesh is usable.
    pub fn health_counts(&self) -> HealthCounts {
        let mut c = HealthCounts::default();
        for (i, cell) in self.cells.iter().enumerate() {
            if i / self.n.max(1) == i % self.n.max(1) {
                continue;
            }
            match cell.map(|v| v.health) {
                None => c.unmeasured += 1,
                Some(LinkHealth::Up) => c.up += 1,
                Some(LinkHealth::Degraded) => c.degraded += 1,
                Some(LinkHealth::Down) => c.down += 1,
                Some(LinkHealth::Stale) => c.stale += 1,
            }
        }
        c
    }

    /// Grows the table by one site with no known link; used by what-if.
    pub fn grow(&mut self) {
        let n = self.n + 1;
        let mut cells = vec![None; n * n];
        for i in 0..self.n {
            cells[i * n..i * n + self.n].copy_from_slice(&self.cells[i * self.n..(i + 1) * self.n]);
        }
        self.n = n;
        self.cells = cells;
    }
}

/// Directed links of a [`LinkTable`] by health (self-links left out).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthCounts {
    /// Usable, within thresholds.
    pub up: usize,
    /// Usable, past a loss or jitter threshold.
    pub degraded: usize,
    /// Not usable.
    pub down: usize,
    /// No recent report.
    pub stale: usize,
    /// Never measured.
    pub unmeasured: usize,
}

/// Everything one route computation reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct World {
    /// Sites and their dense indices.
    pub inventory: Inventory,
    /// Link views, indexed like the inventory; shared so that a route table can keep the
    /// snapshot it was computed from without a copy.
    pub links: Arc<LinkTable>,
    /// Operator and automatic drains in force.
    pub drains: DrainSet,
}

impl World {
    /// A world with these sites, no link known and nothing drained.
    pub fn new(inventory: Inventory) -> Self {
        let n = inventory.len();
        World {
            inventory,
            links: Arc::new(LinkTable::new(n)),
            drains: DrainSet::default(),
        }
    }

    /// Sets a link by site ids, validating the metrics.
    pub fn set_link(
        &mut self,
        from: &SiteId,
        to: &SiteId,
        metrics: LinkMetrics,
        health: LinkHealth,
    ) -> Result<(), TopologyError> {
        metrics.validate()?;
        let (a, b) = (self.inventory.require(from)?, self.inventory.require(to)?);
        Arc::make_mut(&mut self.links).set(a, b, Some(LinkView { metrics, health }));
        Ok(())
    }

    /// Per site: may it be an endpoint of a route (active; drained sites keep their rows so
    /// that sessions already there keep routing)?
    pub fn endpoint_mask(&self) -> Vec<bool> {
        self.inventory
            .sites()
            .iter()
            .map(|s| s.role == Role::Active)
            .collect()
    }

    /// Per site: may it relay (active and not drained)?
    pub fn relay_mask(&self) -> Vec<bool> {
        let drained = self.drains.drained_mask(&self.inventory);
        self.inventory
            .sites()
            .iter()
            .zip(drained)
            .map(|(s, d)| s.role == Role::Active && !d)
            .collect()
    }

    /// Adds a site with links to others (both directions given per peer); used by what-if.
    pub fn add_site(
        &mut self,
        site: Site,
        links: &[(SiteId, LinkMetrics)],
    ) -> Result<SiteIdx, TopologyError> {
        for (_, m) in links {
            m.validate()?;
        }
        let idx = self.inventory.push(site)?;
        let table = Arc::make_mut(&mut self.links);
        table.grow();
        for (peer, m) in links {
            let p = self.inventory.require(peer)?;
            let view = Some(LinkView {
                metrics: *m,
                health: LinkHealth::Up,
            });
            table.set(idx, p, view);
            table.set(p, idx, view);
        }
        Ok(idx)
    }
}
