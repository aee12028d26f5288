//! Drains and their guardrails, for operators and automation alike.
//!
//! A drained site takes no new sessions and relays nothing; sessions already on it keep their
//! routes. Every drain records who, why, when and whether a guardrail was overridden. The check
//! and the write are one call on `&mut DrainSet` ([`DrainSet::drain`]), so a caller that holds
//! the set under one lock or one store transaction cannot let two racing operators both pass.
//!
//! The automatic policy ([`AutoDrainPolicy`]) sees a site whose links to most peers are down or
//! degraded at once — the site's problem, not the links' — and drains it (mode `enforce`) or
//! only says so (mode `recommend`), through the same guardrails, never forced, at most once per
//! cooldown, and undoes its own drains once the site has been healthy for a while.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::TopologyError;
use crate::link::{LinkHealth, TimestampMs};
use crate::site::{Inventory, RegionId, Role, SiteId, SiteIdx};
use crate::world::LinkTable;

/// What is drained.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "name")]
pub enum DrainTarget {
    /// One site.
    Site(SiteId),
    /// Every site of a region.
    Region(RegionId),
    /// The link between two sites, both ways (ends in order; see [`DrainTarget::link`]): no
    /// path uses it, as if it were down, while it is still measured. For a provider's
    /// announced maintenance on one link, where draining either site would be too much.
    Link(SiteId, SiteId),
}

impl DrainTarget {
    /// The link between `a` and `b`, whichever way round they are named.
    pub fn link(a: SiteId, b: SiteId) -> Self {
        if a <= b {
            DrainTarget::Link(a, b)
        } else {
            DrainTarget::Link(b, a)
        }
    }
}

impl fmt::Display for DrainTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrainTarget::Site(s) => write!(f, "site {s}"),
            DrainTarget::Region(r) => write!(f, "region {r}"),
            DrainTarget::Link(a, b) => write!(f, "link {a}<->{b}"),
        }
    }
}

/// Who asked for a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainOrigin {
    /// A person, through `axonctl`.
    Operator,
    /// The controller's health policy.
    Automatic,
}

/// A drain in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    /// What is drained.
    pub target: DrainTarget,
    /// Why, in the operator's words or the policy's.
    pub reason: String,
    /// Who (user name, or `auto`).
    pub author: String,
    /// When it was accepted.
    pub at_ms: TimestampMs,
    /// Operator or automatic.
    pub origin: DrainOrigin,
    /// Whether a guardrail was overridden with `--force`.
    pub forced: bool,
    /// When the drain lifts itself (a maintenance window: `axonctl drain --for 2h`); `None`
    /// holds until an undrain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<TimestampMs>,
}

/// A request to drain, before the guardrails have looked at it.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainRequest {
    /// What to drain.
    pub target: DrainTarget,
    /// Why; must not be empty.
    pub reason: String,
    /// Who asks.
    pub author: String,
    /// When.
    pub at_ms: TimestampMs,
    /// Operator or automatic.
    pub origin: DrainOrigin,
    /// Override the guardrails (operators only).
    pub force: bool,
    /// Lift the drain by itself at this time (after `at_ms`); `None` holds until an undrain.
    pub until_ms: Option<TimestampMs>,
}

/// The guardrails, named so that refusals and counters can say which one fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guardrail {
    /// A site drain never takes the last healthy site of its region.
    LastHealthySiteInRegion,
    /// Never fewer than `min_active_regions` regions with an undrained site.
    MinActiveRegions,
    /// Never more than `max_drained_fraction` of all capacity drained.
    MaxDrainedFraction,
    /// At most one automatic drain per cooldown.
    AutoCooldown,
    /// Automation never overrides a guardrail.
    AutomationNeverForces,
}

impl fmt::Display for Guardrail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Guardrail::LastHealthySiteInRegion => "last_healthy_site_in_region",
            Guardrail::MinActiveRegions => "min_active_regions",
            Guardrail::MaxDrainedFraction => "max_drained_fraction",
            Guardrail::AutoCooldown => "auto_cooldown",
            Guardrail::AutomationNeverForces => "automation_never_forces",
        })
    }
}

/// Limits every drain must respect unless an operator forces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardrailConfig {
    /// Regions that must keep at least one undrained active site. Default 2 (never more than
    /// were active before the drain: a one-region mesh may still drain a site).
    pub min_active_regions: usize,
    /// Largest share of active capacity that may be drained, 0..=1. Default 0.3.
    pub max_drained_fraction: f64,
}

impl Default for GuardrailConfig {
    fn default() -> Self {
        GuardrailConfig {
            min_active_regions: 2,
            max_drained_fraction: 0.3,
        }
    }
}

/// What a drain would do, for `--dry-run` and for the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainImpact {
    /// Sites that become drained (already drained ones are not listed).
    pub sites: Vec<SiteId>,
    /// Capacity drained before, sessions.
    pub capacity_drained_before: u64,
    /// Capacity drained after, sessions.
    pub capacity_drained_after: u64,
    /// Capacity of all active sites, sessions.
    pub capacity_total: u64,
    /// Regions with an undrained active site after the drain.
    pub active_regions_after: usize,
    /// Guardrails that would refuse but were overridden by `force`.
    pub overridden: Vec<Guardrail>,
}

/// The drains in force. Mutated only through [`DrainSet::drain`] and [`DrainSet::undrain`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DrainSet {
    drains: Vec<Drain>,
}

impl DrainSet {
    /// Rebuilds a set from stored drains (a snapshot or the HA store), refusing duplicates.
    pub fn from_drains(drains: Vec<Drain>) -> Result<Self, TopologyError> {
        let mut seen = BTreeSet::new();
        for d in &drains {
            if !seen.insert(&d.target) {
                return Err(TopologyError::AlreadyDrained(d.target.to_string()));
            }
        }
        Ok(DrainSet { drains })
    }

    /// The drains, in the order they were accepted.
    pub fn list(&self) -> &[Drain] {
        &self.drains
    }

    /// Per site of the inventory: drained directly or through its region.
    pub fn drained_mask(&self, inv: &Inventory) -> Vec<bool> {
        let sites: BTreeSet<&SiteId> = self
            .drains
            .iter()
            .filter_map(|d| match &d.target {
                DrainTarget::Site(s) => Some(s),
                DrainTarget::Region(_) | DrainTarget::Link(..) => None,
            })
            .collect();
        let regions: BTreeSet<&RegionId> = self
            .drains
            .iter()
            .filter_map(|d| match &d.target {
                DrainTarget::Region(r) => Some(r),
                DrainTarget::Site(_) | DrainTarget::Link(..) => None,
            })
            .collect();
        inv.sites()
            .iter()
            .map(|s| sites.contains(&s.id) || regions.contains(&s.region))
            .collect()
    }

    /// The drained links, both directions of each, as inventory indices (ends no longer in
    /// the inventory are skipped).
    pub fn drained_links(&self, inv: &Inventory) -> Vec<(SiteIdx, SiteIdx)> {
        self.drains
            .iter()
            .filter_map(|d| match &d.target {
                DrainTarget::Link(a, b) => Some((inv.index_of(a)?, inv.index_of(b)?)),
                _ => None,
            })
            .flat_map(|(a, b)| [(a, b), (b, a)])
            .collect()
    }

    /// Checks a request against the guardrails without changing anything (`--dry-run`).
    /// `site_healthy` is indexed like the inventory (see [`site_health`]).
    pub fn check(
        &self,
        inv: &Inventory,
        site_healthy: &[bool],
        cfg: &GuardrailConfig,
        req: &DrainRequest,
    ) -> Result<DrainImpact, TopologyError> {
        if req.reason.trim().is_empty() {
            return Err(TopologyError::InvalidValue {
                field: "reason",
                detail: "a drain needs a reason".into(),
            });
        }
        if self.drains.iter().any(|d| d.target == req.target) {
            return Err(TopologyError::AlreadyDrained(req.target.to_string()));
        }
        if req.until_ms.is_some_and(|u| u <= req.at_ms) {
            return Err(TopologyError::InvalidValue {
                field: "until",
                detail: "a timed drain must end after it starts".into(),
            });
        }
        if req.force && req.origin == DrainOrigin::Automatic {
            return Err(TopologyError::GuardrailRefused {
                rule: Guardrail::AutomationNeverForces,
                detail: "automatic drains cannot override guardrails".into(),
            });
        }
        let targets: Vec<SiteIdx> = match &req.target {
            DrainTarget::Site(id) => vec![inv.require(id)?],
            DrainTarget::Region(r) => {
                let t: Vec<SiteIdx> = (0..inv.len())
                    .filter_map(|i| SiteIdx::try_from(i).ok())
                    .filter(|&i| &inv.site(i).region == r)
                    .collect();
                if t.is_empty() {
                    return Err(TopologyError::UnknownRegion(r.clone()));
                }
                t
            }
            // A link drains no site: it takes no capacity, so no guardrail holds it.
            DrainTarget::Link(a, b) => {
                let (i, j) = (inv.require(a)?, inv.require(b)?);
                if i == j {
                    return Err(TopologyError::InvalidValue {
                        field: "link",
                        detail: format!("{a} to itself is no link"),
                    });
                }
                if *a > *b {
                    return Err(TopologyError::InvalidValue {
                        field: "link",
                        detail: "ends out of order (make it with DrainTarget::link)".into(),
                    });
                }
                Vec::new()
            }
        };
        let before = self.drained_mask(inv);
        let mut after = before.clone();
        for &t in &targets {
            after[usize::from(t)] = true;
        }
        let active = |i: usize| inv.sites()[i].role == Role::Active;
        let capacity = |mask: &[bool]| -> u64 {
            (0..inv.len())
                .filter(|&i| active(i) && mask[i])
                .map(|i| u64::from(inv.sites()[i].capacity))
                .sum()
        };
        let active_regions = |mask: &[bool]| -> usize {
            (0..inv.len())
                .filter(|&i| active(i) && !mask[i])
                .map(|i| &inv.sites()[i].region)
                .collect::<BTreeSet<_>>()
                .len()
        };
        let capacity_total: u64 = (0..inv.len())
            .filter(|&i| active(i))
            .map(|i| u64::from(inv.sites()[i].capacity))
            .sum();
        let impact = DrainImpact {
            sites: targets
                .iter()
                .filter(|&&t| !before[usize::from(t)])
                .map(|&t| inv.site(t).id.clone())
                .collect(),
            capacity_drained_before: capacity(&before),
            capacity_drained_after: capacity(&after),
            capacity_total,
            active_regions_after: active_regions(&after),
            overridden: Vec::new(),
        };

        let mut refusals: Vec<(Guardrail, String)> = Vec::new();
        if let DrainTarget::Site(id) = &req.target {
            let t = usize::from(targets[0]);
            let healthy = |i: usize| active(i) && !before[i] && site_healthy.get(i) == Some(&true);
            if healthy(t) {
                let region = &inv.sites()[t].region;
                let others = (0..inv.len())
                    .filter(|&i| i != t && &inv.sites()[i].region == region && healthy(i))
                    .count();
                if others == 0 {
                    refusals.push((
                        Guardrail::LastHealthySiteInRegion,
                        format!(
                            "{id} is the last healthy site of region {region}; drain the region \
                             explicitly or use --force"
                        ),
                    ));
                }
            }
        }
        let regions_before = active_regions(&before);
        let need = cfg.min_active_regions.min(regions_before);
        if impact.active_regions_after < need {
            refusals.push((
                Guardrail::MinActiveRegions,
                format!(
                    "draining {} would leave {} active region(s); at least {} must stay",
                    req.target, impact.active_regions_after, need
                ),
            ));
        }
        if capacity_total > 0 {
            let frac = impact.capacity_drained_after as f64 / capacity_total as f64;
            if frac > cfg.max_drained_fraction
                && impact.capacity_drained_after > impact.capacity_drained_before
            {
                refusals.push((
                    Guardrail::MaxDrainedFraction,
                    format!(
                        "draining {} would drain {:.0}% of capacity ({} of {} sessions); the \
                         limit is {:.0}%",
                        req.target,
                        frac * 100.0,
                        impact.capacity_drained_after,
                        capacity_total,
                        cfg.max_drained_fraction * 100.0
                    ),
                ));
            }
        }
        match refusals.into_iter().next() {
            None => Ok(impact),
            Some(_) if req.force => {
                let mut impact = impact;
                impact.overridden = self.refused_rules(inv, site_healthy, cfg, req);
                Ok(impact)
            }
            Some((rule, detail)) => Err(TopologyError::GuardrailRefused { rule, detail }),
        }
    }

    fn refused_rules(
        &self,
        inv: &Inventory,
        site_healthy: &[bool],
        cfg: &GuardrailConfig,
        req: &DrainRequest,
    ) -> Vec<Guardrail> {
        // Re-run the check unforced, relaxing one rule at a time, to name every rule that fired.
        let mut rules = Vec::new();
        let mut relaxed = cfg.clone();
        let mut unforced = req.clone();
        unforced.force = false;
        let mut healthy = site_healthy.to_vec();
        for _ in 0..3 {
            match self.check(inv, &healthy, &relaxed, &unforced) {
                Err(TopologyError::GuardrailRefused { rule, .. }) => {
                    rules.push(rule);
                    match rule {
                        Guardrail::LastHealthySiteInRegion => healthy.iter_mut().for_each(|h| *h = false),
                        Guardrail::MinActiveRegions => relaxed.min_active_regions = 0,
                        Guardrail::MaxDrainedFraction => relaxed.max_drained_fraction = 1.0,
                        _ => break,
                    }
                }
                _ => break,
            }
        }
        rules
    }

    /// Checks and records a drain in one step: the transaction of the guardrails.
    pub fn drain(
        &mut self,
        inv: &Inventory,
        site_healthy: &[bool],
        cfg: &GuardrailConfig,
        req: DrainRequest,
    ) -> Result<DrainImpact, TopologyError> {
        let impact = self.check(inv, site_healthy, cfg, &req)?;
        self.drains.push(Drain {
            target: req.target,
            reason: req.reason,
            author: req.author,
            at_ms: req.at_ms,
            origin: req.origin,
            forced: req.force,
            until_ms: req.until_ms,
        });
        Ok(impact)
    }

    /// Lifts the timed drains whose end has come by `now`, and returns them. Lifting needs no
    /// guardrail: it only gives capacity back.
    pub fn lift_expired(&mut self, now: TimestampMs) -> Vec<Drain> {
        let (expired, kept) = std::mem::take(&mut self.drains)
            .into_iter()
            .partition(|d| d.until_ms.is_some_and(|u| u <= now));
        self.drains = kept;
        expired
    }

    /// Removes a drain and returns it.
    pub fn undrain(&mut self, target: &DrainTarget) -> Result<Drain, TopologyError> {
        let i = self
            .drains
            .iter()
            .position(|d| &d.target == target)
            .ok_or_else(|| TopologyError::NotDrained(target.to_string()))?;
        Ok(self.drains.remove(i))
    }
}

/// A site's health as seen through its links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteHealth {
    /// Peers measured from or to this site.
    pub peers: u32,
    /// Peers whose link to or from this site is down or degraded.
    pub bad_peers: u32,
    /// True when the policy judges the site, not its links, to be at fault.
    pub sick: bool,
}

impl SiteHealth {
    /// Judged on at least `min_peers` peers, and more than `sick_fraction` of them bad: the
    /// site's own verdict, before the mesh-wide rule of [`site_health`] may clear `sick`.
    pub fn failing(&self, cfg: &AutoDrainConfig) -> bool {
        self.peers >= cfg.min_peers && f64::from(self.bad_peers) > cfg.sick_fraction * f64::from(self.peers)
    }
}

/// Judges every site from its links: a site is sick when, of at least `min_peers` active
/// peers, more than `sick_fraction` have a down or degraded link to or from it. When more
/// than half of the sites judged would be sick at once, none is: the trouble is the mesh's
/// (a provider-wide event, or the controller's own view of it on a starved host), and
/// draining sites one by one would not mend it.
pub fn site_health(inv: &Inventory, links: &LinkTable, cfg: &AutoDrainConfig) -> Vec<SiteHealth> {
    let mut health = judge_each(inv, links, cfg);
    let judged = health.iter().filter(|h| h.peers >= cfg.min_peers).count();
    let sick = health.iter().filter(|h| h.sick).count();
    if sick * 2 > judged {
        for h in &mut health {
            h.sick = false;
        }
    }
    health
}

fn judge_each(inv: &Inventory, links: &LinkTable, cfg: &AutoDrainConfig) -> Vec<SiteHealth> {
    let n = inv.len();
    let bad = |h: Option<LinkHealth>| matches!(h, Some(LinkHealth::Down | LinkHealth::Degraded));
    (0..n)
        .map(|i| {
            let mut peers = 0;
            let mut bad_peers = 0;
            for j in 0..n {
                if i == j || inv.sites()[j].role != Role::Active {
                    continue;
                }
                let (a, b) = (i as SiteIdx, j as SiteIdx);
                let out = links.get(a, b).map(|v| v.health);
                let back = links.get(b, a).map(|v| v.health);
                if out.is_none() && back.is_none() {
                    continue;
                }
                peers += 1;
                if bad(out) || bad(back) {
                    bad_peers += 1;
                }
            }
            let mut h = SiteHealth {
                peers,
                bad_peers,
                sick: false,
            };
            h.sick = h.failing(cfg);
            h
        })
        .collect()
}

/// What the automatic policy may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoMode {
    /// Nothing.
    Off,
    /// Say which sites it would drain; change nothing.
    #[default]
    Recommend,
    /// Drain and undrain, through the guardrails.
    Enforce,
}

/// The automatic drain policy's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutoDrainConfig {
    /// `off`, `recommend` or `enforce`. Default `recommend`.
    pub mode: AutoMode,
    /// Share of a site's peers that must be bad at once for the site to be sick. Default 0.5
    /// (strictly more than half).
    pub sick_fraction: f64,
    /// Fewest measured peers before a site is judged at all. Default 3.
    pub min_peers: u32,
    /// At most one automatic drain per this period, ms. Default 300,000 (5 min).
    pub cooldown_ms: u64,
    /// An automatic drain is undone after the site has been healthy this long, ms.
    /// Default 600,000 (10 min).
    pub undrain_after_ms: u64,
}

impl Default for AutoDrainConfig {
    fn default() -> Self {
        AutoDrainConfig {
            mode: AutoMode::Recommend,
            sick_fraction: 0.5,
            min_peers: 3,
            cooldown_ms: 300_000,
            undrain_after_ms: 600_000,
        }
    }
}

impl AutoDrainConfig {
    /// Refuses settings that would judge every site sick or none: `sick_fraction` must lie
    /// in `0..1` and `min_peers` be at least 1.
    pub fn validate(&self) -> Result<(), TopologyError> {
        if !(0.0..1.0).contains(&self.sick_fraction) {
            return Err(TopologyError::InvalidValue {
                field: "sick_fraction",
                detail: format!("{} (must be at least 0 and below 1)", self.sick_fraction),
            });
        }
        if self.min_peers == 0 {
            return Err(TopologyError::InvalidValue {
                field: "min_peers",
                detail: "0 (a site is judged on at least one peer)".into(),
            });
        }
        Ok(())
    }
}

/// What the automatic policy decided in one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AutoAction {
    /// The site was drained (mode `enforce`).
    Drained {
        /// The site.
        site: SiteId,
        /// Its health when judged.
        health: SiteHealth,
    },
    /// The site would be drained (mode `recommend`).
    Recommended {
        /// The site.
        site: SiteId,
        /// Its health when judged.
        health: SiteHealth,
    },
    /// The site is sick but a guardrail or the cooldown held the drain back.
    Held {
        /// The site.
        site: SiteId,
        /// The guardrail that refused.
        rule: Guardrail,
        /// Its explanation.
        detail: String,
    },
    /// An automatic drain was undone after the site stayed healthy.
    Undrained {
        /// The site.
        site: SiteId,
    },
}

/// Memory of the automatic policy between evaluations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AutoDrainPolicy {
    last_drain_ms: Option<TimestampMs>,
    healthy_since: HashMap<SiteId, TimestampMs>,
}

impl AutoDrainPolicy {
    /// The policy of a process that takes over `drains` (a restart, a new leader): the
    /// cooldown runs from the newest automatic drain among them, so that a restart does not
    /// allow a second drain at once; every site's healthy period starts afresh.
    pub fn resume(drains: &DrainSet) -> Self {
        AutoDrainPolicy {
            last_drain_ms: drains
                .list()
                .iter()
                .filter(|d| d.origin == DrainOrigin::Automatic)
                .map(|d| d.at_ms)
                .max(),
            healthy_since: HashMap::new(),
        }
    }

    /// Judges every site and acts per the mode. Enforced drains go through
    /// [`DrainSet::drain`] with origin `Automatic` and are never forced.
    pub fn evaluate(
        &mut self,
        inv: &Inventory,
        health: &[SiteHealth],
        drains: &mut DrainSet,
        cfg: &AutoDrainConfig,
        guard: &GuardrailConfig,
        now: TimestampMs,
    ) -> Vec<AutoAction> {
        let mut actions = Vec::new();
        if cfg.mode == AutoMode::Off {
            return actions;
        }
        // Healthy means judged and found well: a site measured on too few peers (its links
        // not yet reported, after a restart), or one whose links are bad but not judged sick
        // because the whole mesh looks bad, neither starts nor keeps a healthy period.
        for (site, h) in inv.sites().iter().zip(health) {
            if h.sick || h.peers < cfg.min_peers || h.failing(cfg) {
                self.healthy_since.remove(&site.id);
            } else {
                self.healthy_since.entry(site.id.clone()).or_insert(now);
            }
        }
        // Undo our own drains once the site has been healthy long enough.
        if cfg.mode == AutoMode::Enforce {
            let ours: Vec<SiteId> = drains
                .list()
                .iter()
                .filter(|d| d.origin == DrainOrigin::Automatic)
                .filter_map(|d| match &d.target {
                    DrainTarget::Site(s) => Some(s.clone()),
                    DrainTarget::Region(_) | DrainTarget::Link(..) => None,
                })
                .collect();
            for site in ours {
                let since = self.healthy_since.get(&site).copied();
                if since.is_some_and(|t| now.saturating_sub(t) >= cfg.undrain_after_ms)
                    && drains.undrain(&DrainTarget::Site(site.clone())).is_ok()
                {
                    actions.push(AutoAction::Undrained { site });
                }
            }
        }
        let healthy: Vec<bool> = health.iter().map(|h| !h.sick).collect();
        let drained = drains.drained_mask(inv);
        // Worst first, so the one drain a cooldown allows goes to the sickest site.
        let mut sick: Vec<usize> = (0..inv.len())
            .filter(|&i| health[i].sick && !drained[i] && inv.sites()[i].role == Role::Active)
            .collect();
        sick.sort_by(|&a, &b| {
            let r = |i: usize| f64::from(health[i].bad_peers) / f64::from(health[i].peers.max(1));
            r(b).total_cmp(&r(a)).then(a.cmp(&b))
        });
        for i in sick {
            let site = inv.sites()[i].id.clone();
            let req = DrainRequest {
                target: DrainTarget::Site(site.clone()),
                reason: format!(
                    "automatic: {} of {} peers down or degraded",
                    health[i].bad_peers, health[i].peers
                ),
                author: "auto".into(),
                at_ms: now,
                origin: DrainOrigin::Automatic,
                force: false,
                until_ms: None,
            };
            if cfg.mode == AutoMode::Recommend {
                match drains.check(inv, &healthy, guard, &req) {
                    Ok(_) => actions.push(AutoAction::Recommended {
                        site,
                        health: health[i],
                    }),
                    Err(TopologyError::GuardrailRefused { rule, detail }) => {
                        actions.push(AutoAction::Held { site, rule, detail })
                    }
                    Err(_) => {}
                }
                continue;
            }
            if let Some(last) = self.last_drain_ms
                && now.saturating_sub(last) < cfg.cooldown_ms
            {
                actions.push(AutoAction::Held {
                    site,
                    rule: Guardrail::AutoCooldown,
                    detail: format!(
                        "an automatic drain happened {} ms ago; cooldown is {} ms",
                        now.saturating_sub(last),
                        cfg.cooldown_ms
                    ),
                });
                continue;
            }
            match drains.drain(inv, &healthy, guard, req) {
                Ok(_) => {
                    self.last_drain_ms = Some(now);
                    actions.push(AutoAction::Drained {
                        site,
                        health: health[i],
                    });
                }
                Err(TopologyError::GuardrailRefused { rule, detail }) => {
                    actions.push(AutoAction::Held { site, rule, detail })
                }
                Err(_) => {}
            }
        }
        actions
    }
}
