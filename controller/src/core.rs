//! The controller's state machine, without I/O: reports in, tables and drains out.
//!
//! The gRPC services and the compute loop hold a [`Core`] behind a mutex and call it; every
//! decision is delegated to `topology`. Time is a parameter, so the whole controller logic is
//! tested synchronously.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use proto::v1 as pb;
use topology::drain::{AutoAction, SiteHealth};
use topology::{
    AutoDrainPolicy, Computation, Drain, DrainOrigin, DrainRequest, DrainSet, DrainTarget, Epoch, Guardrail,
    Inventory, LinkState, LinkTable, LinkWindow, Liveness, Reason, RouteEngine, RouteEntry, RouteTable,
    SiteId, TimestampMs, Version, World, site_health,
};

use crate::config::ControllerConfig;
use crate::error::ControllerError;
use crate::store::{DrainAction, DrainEvent, Snapshot};
use topology::drain::DrainImpact;
use topology::link::Pool;

/// Every `reason` a report is refused for (`axon_ingest_rejected_total`): the counter exports
/// each from the start, so that an alert on its increase sees the first refusal.
pub const REJECT_REASONS: [&str; 7] = [
    "malformed",
    "invalid",
    "future",
    "replay",
    "self_link",
    "unknown_site",
    "bad_status",
];

fn reject(reason: &'static str, detail: impl Into<String>) -> ControllerError {
    debug_assert!(
        REJECT_REASONS.contains(&reason),
        "{reason} is not in REJECT_REASONS"
    );
    ControllerError::Rejected {
        reason,
        detail: detail.into(),
    }
}

/// Two distinct elements of `v`, both mutable.
fn pair_mut<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    debug_assert_ne!(i, j);
    if i < j {
        let (lo, hi) = v.split_at_mut(j);
        (&mut lo[i], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(i);
        (&mut hi[0], &mut lo[j])
    }
}

/// What a window did to its pair's loss estimate, beyond the gradual update every window
/// makes: what the ingest stream acts on at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowEffect {
    /// The estimate moved at once (a change found, or a rise confirmed): routes may move now,
    /// so the caller computes at once rather than at the next tick.
    pub loss_moved: bool,
    /// The loss rose and the windows since have not yet confirmed it, or the last windows
    /// were improbable though not enough for a change: the reporting prober is asked for an
    /// evidence burst to the window's far end (`ReportAck.evidence_wanted`).
    pub wants_evidence: bool,
}

/// What a configuration reload changed ([`Core::reconfigure`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// The sections that differ from the configuration in force (empty: the same file).
    pub changed: Vec<&'static str>,
    /// Whether each pair's switching memory started afresh (the relay limit changed).
    pub memory_reset: bool,
}

/// What the automatic drain policy makes of a sick site ([`Core::sick_sites`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Nothing is done: `auto_drain.mode = off`, or a shadow site, which carries nothing
    /// to drain.
    Off,
    /// `recommend`: an operator should drain it, and the guardrails would let them.
    Recommended,
    /// A guardrail or the cooldown holds the drain back (in `recommend`: a guardrail would
    /// refuse it).
    Held {
        /// The rule.
        rule: Guardrail,
        /// Its explanation.
        detail: String,
    },
    /// Drained: by the policy (`automatic`), or already by an operator.
    Drained {
        /// True when the policy's own drain holds it.
        automatic: bool,
    },
}

impl Verdict {
    /// A short name for logs, metrics and `axonctl status`.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Off => "off",
            Verdict::Recommended => "recommended",
            Verdict::Held { .. } => "held",
            Verdict::Drained { automatic: true } => "drained",
            Verdict::Drained { automatic: false } => "drained_by_operator",
        }
    }

    /// The same verdict for logging purposes: a held drain's explanation counts down the
    /// cooldown, so only its rule is compared.
    fn same_as(&self, other: &Verdict) -> bool {
        match (self, other) {
            (Verdict::Held { rule: a, .. }, Verdict::Held { rule: b, .. }) => a == b,
            _ => self == other,
        }
    }
}

/// A site the automatic policy judges sick at the last computation: most of its peers' links
/// to or from it are down or degraded at once, which points at the site, not at its links.
#[derive(Debug, Clone, PartialEq)]
pub struct SickSite {
    /// The site.
    pub site: SiteId,
    /// Its peers and how many of them are bad.
    pub health: SiteHealth,
    /// What the policy did or would do.
    pub verdict: Verdict,
}

/// A change in the policy's view between two computations: what the daemon logs and counts
/// (a verdict that stays the same is not repeated).
#[derive(Debug, Clone, PartialEq)]
pub enum AutoEvent {
    /// A site turned sick, or its verdict changed.
    Judged(SickSite),
    /// A site judged sick before is not any more.
    Recovered(SiteId),
    /// The policy lifted its own drain of a site that stayed healthy for `undrain_after_ms`.
    Undrained(SiteId),
}

/// Everything the controller knows and decides.
#[derive(Debug)]
pub struct Core {
    cfg: ControllerConfig,
    world: World,
    /// `states[from * n + to]`.
    states: Vec<LinkState>,
    /// Probes sent (as reported) by the last two windows taken per link, newest first: the
    /// most a window can resolve beyond its own (see [`Core::window`]); `None` before this
    /// controller's first window of the link.
    sent_before: Vec<Option<[u32; 2]>>,
    /// The mesh's loss as of the last computation: the prior links lean on, and new windows
    /// are tested for a change against.
    prior: Pool,
    engine: RouteEngine,
    table: Option<RouteTable>,
    /// The last report sequence taken per prober instance.
    reports: HashMap<(SiteId, u64), u64>,
    /// Drained sites not yet announced as unready: make before break (see [`Core::hold_unready`]).
    held_ready: Vec<SiteId>,
    /// The automatic drain policy's memory (cooldown, healthy periods).
    auto: AutoDrainPolicy,
    /// Sites judged sick at the last computation.
    sick: Vec<SickSite>,
    /// What changed in the policy's view at the last computation.
    auto_events: Vec<AutoEvent>,
    /// The drain log, oldest first (see [`DrainEvent`]).
    drain_log: VecDeque<DrainEvent>,
}

impl Core {
    /// A core for `inventory`, continuing from `snapshot` (drains, version counter).
    pub fn new(
        cfg: ControllerConfig,
        inventory: Inventory,
        snapshot: &Snapshot,
    ) -> Result<Self, ControllerError> {
        let n = inventory.len();
        let mut world = World::new(inventory);
        world.drains = DrainSet::from_drains(snapshot.drains.clone())?;
        let auto = AutoDrainPolicy::resume(&world.drains);
        let engine = RouteEngine::new(
            cfg.engine.clone(),
            Epoch(snapshot.epoch.max(1)),
            Version(snapshot.last_version + 1),
        )?;
        Ok(Core {
            cfg,
            world,
            states: vec![LinkState::default(); n * n],
            sent_before: vec![None; n * n],
            prior: Pool::NONE,
            engine,
            table: None,
            reports: HashMap::new(),
            held_ready: Vec::new(),
            auto,
            sick: Vec::new(),
            auto_events: Vec::new(),
            drain_log: snapshot.drain_log.iter().cloned().collect(),
        })
    }

    /// Takes the lead under `epoch` (high availability): drains and the version counter come
    /// from the stored state the previous leader left, and the hysteresis memory starts
    /// afresh (this replica computed nothing while it followed).
    pub fn lead(&mut self, epoch: u64, snapshot: &Snapshot) -> Result<(), ControllerError> {
        self.world.drains = DrainSet::from_drains(snapshot.drains.clone())?;
        self.engine = RouteEngine::new(
            self.cfg.engine.clone(),
            Epoch(epoch.max(1)),
            Version(snapshot.last_version + 1),
        )?;
        self.table = None;
        self.held_ready.clear();
        // The cooldown continues from the drains taken over; healthy periods start afresh.
        self.auto = AutoDrainPolicy::resume(&self.world.drains);
        self.sick.clear();
        self.auto_events.clear();
        self.drain_log = snapshot.drain_log.iter().cloned().collect();
        Ok(())
    }

    /// Every pair's switching memory as of the last computation: the candidate winning and
    /// its streak, which a table's reasons do not show once nothing changed (an unchanged
    /// table is not published again, so its rows keep the reasons they were chosen with).
    pub fn hysteresis(&self) -> &topology::hysteresis::HysteresisState {
        self.engine.hysteresis()
    }

    /// The world as of the last computation.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The state of the link `from → to` (site numbers of the inventory), for explaining a
    /// verdict: its recent windows ([`LinkState::history`]) and loss counts.
    pub fn link_state(&self, from: usize, to: usize) -> Option<&LinkState> {
        let n = self.world.inventory.len();
        (from < n && to < n).then(|| &self.states[from * n + to])
    }

    /// The table in force.
    pub fn table(&self) -> Option<&RouteTable> {
        self.table.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &ControllerConfig {
        &self.cfg
    }

    /// Takes a new configuration without a restart (`SIGHUP`): the tunables — link cost,
    /// path search and hysteresis (`engine`), link smoothing and health (`links`), drain
    /// guardrails, the automatic drain policy (`auto_drain`), `max_future_ms`,
    /// `journal_rows` — apply from the next window and the next computation, which
    /// publishes a new version. Keys the running daemon was built around
    /// (addresses, store, TLS, tokens, the inventory, its timers) need a restart: a file that
    /// changes any of them is refused whole, naming them, and nothing changes (the TLS files
    /// themselves are read again by [`crate::daemon::Shared::reload`]). Link states,
    /// drains and each pair's switching memory are kept (the memory is reset only when the
    /// relay limit changed; see [`RouteEngine::reconfigure`]).
    pub fn reconfigure(&mut self, new: ControllerConfig) -> Result<Reload, ControllerError> {
        new.validate()?;
        let old = &self.cfg;
        let restart: Vec<&str> = [
            ("name", old.name != new.name),
            ("grpc_listen", old.grpc_listen != new.grpc_listen),
            ("http_listen", old.http_listen != new.http_listen),
            ("tick_ms", old.tick_ms != new.tick_ms),
            ("resync_ms", old.resync_ms != new.resync_ms),
            ("store", old.store != new.store),
            ("tls", old.tls != new.tls),
            ("operator_tokens", old.operator_tokens != new.operator_tokens),
            ("sites", old.sites != new.sites),
        ]
        .into_iter()
        .filter_map(|(key, differs)| differs.then_some(key))
        .collect();
        if !restart.is_empty() {
            return Err(ControllerError::Config(format!(
                "{} cannot change without a restart; nothing was reloaded",
                restart.join(", ")
            )));
        }
        let changed: Vec<&'static str> = [
            ("engine", old.engine != new.engine),
            ("links", old.links != new.links),
            ("guardrails", old.guardrails != new.guardrails),
            ("auto_drain", old.auto_drain != new.auto_drain),
            ("max_future_ms", old.max_future_ms != new.max_future_ms),
            ("journal_rows", old.journal_rows != new.journal_rows),
        ]
        .into_iter()
        .filter_map(|(key, differs)| differs.then_some(key))
        .collect();
        let memory_reset = if old.engine == new.engine {
            false
        } else {
            self.engine.reconfigure(new.engine.clone())?
        };
        self.cfg = new;
        Ok(Reload {
            changed,
            memory_reset,
        })
    }

    /// What to persist now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            epoch: self.table.as_ref().map_or(1, |t| t.id().epoch.0),
            last_version: self.table.as_ref().map_or(0, |t| t.id().version.0),
            drains: self.world.drains.list().to_vec(),
            drain_log: self.drain_log.iter().cloned().collect(),
        }
    }

    /// The drain log, newest first: at most `limit` entries.
    pub fn drain_log(&self, limit: usize) -> impl Iterator<Item = &DrainEvent> {
        self.drain_log.iter().rev().take(limit)
    }

    fn log_drain(&mut self, event: DrainEvent) {
        self.drain_log.push_back(event);
        while self.drain_log.len() > self.cfg.drain_log_rows {
            self.drain_log.pop_front();
        }
    }

    /// Whether a report numbered `seq` from this prober instance is new; an old number is a
    /// replay or a resend after a reconnect, acknowledged but not applied again.
    pub fn fresh_report(&mut self, site: &SiteId, instance: u64, seq: u64) -> bool {
        let last = self.reports.entry((site.clone(), instance)).or_insert(0);
        if seq <= *last {
            return false;
        }
        *last = seq;
        true
    }

    fn link_index(&self, from: &str, to: &str) -> Result<usize, ControllerError> {
        let id = |s: &str| SiteId::new(s).map_err(|e| reject("malformed", e.to_string()));
        let (from, to) = (id(from)?, id(to)?);
        let inv = &self.world.inventory;
        let a = inv
            .index_of(&from)
            .ok_or_else(|| reject("unknown_site", format!("unknown site `{from}`")))?;
        let b = inv
            .index_of(&to)
            .ok_or_else(|| reject("unknown_site", format!("unknown site `{to}`")))?;
        if a == b {
            return Err(reject("self_link", format!("a link from `{from}` to itself")));
        }
        Ok(usize::from(a) * inv.len() + usize::from(b))
    }

    /// Takes one window, or refuses it with a reason; a refused window changes nothing.
    pub fn window(
        &mut self,
        w: &pb::LinkWindow,
        reporter: &SiteId,
        now: TimestampMs,
    ) -> Result<WindowEffect, ControllerError> {
        if w.from != reporter.as_str() {
            return Err(reject(
                "malformed",
                format!("`{reporter}` reported a window from `{}`", w.from),
            ));
        }
        let i = self.link_index(&w.from, &w.to)?;
        // Loss over the probes this window resolved (answered or timed out): probes still in
        // flight at its end are neither, and counting them as lost would invent loss on every
        // link whose RTT is a fair part of the window.
        // A window resolves the probes it sent plus those still in flight from the windows
        // before (a probe is resolved within its loss timeout, which may pass a window): more
        // than those is not a measurement. After an evidence burst (ten times the rate) a
        // long link has dozens in flight, so the bound is what the two windows before sent
        // ("twice its own" alone refused some 80 windows of a 25-site lab run, each the end
        // of a burst's evidence). A link's first window at this controller (a new leader, a
        // restart) may be a burst's tail too, and nothing says how many were in flight: it is
        // not refused but weighed as a window resolving twice its own, at the loss it reports
        // (a lab run that killed its controller during bursts refused three such windows).
        let before = self.sent_before[i];
        let carried = before.map_or(w.sent, |b| b[0].saturating_add(b[1]).max(w.sent));
        let bound = w.sent.saturating_add(carried).saturating_add(10);
        let (received, resolved) = match w.received.checked_add(w.lost) {
            Some(r) if r <= bound => (w.received, r),
            Some(r) if before.is_none() => {
                // The reported loss ratio on the most a window may plausibly resolve.
                let received = (f64::from(w.received) * f64::from(bound) / f64::from(r)).round() as u32;
                (received.min(bound), bound)
            }
            _ => {
                return Err(reject(
                    "invalid",
                    format!("{} received + {} lost for {} sent", w.received, w.lost, w.sent),
                ));
            }
        };
        // A window without a reply measured no time: whatever its time fields say (a total
        // outage must still be taken as loss) is not kept.
        let timed = |ms: f64| if received > 0 { ms } else { 0.0 };
        let window = LinkWindow {
            end_ms: w.end_unix_ms,
            sent: resolved,
            received,
            rtt_p50_ms: timed(w.rtt_p50_ms),
            rtt_p90_ms: timed(w.rtt_p90_ms),
            rtt_p99_ms: timed(w.rtt_p99_ms),
            jitter_ms: timed(w.jitter_ms),
        };
        window.validate(now, self.cfg.max_future_ms).map_err(|e| {
            let reason = if e.to_string().contains("future") {
                "future"
            } else {
                "invalid"
            };
            reject(reason, e.to_string())
        })?;
        // Both ends of a pair measure the same round trip: the reverse direction's counts join
        // this one's change test and estimate (see `topology::link`).
        let n = self.world.inventory.len();
        let j = (i % n) * n + i / n;
        let (this, reverse) = pair_mut(&mut self.states, i, j);
        let moves = this.loss_moves() + reverse.loss_moves();
        this.observe_paired(&window, reverse, &self.cfg.links, self.prior)
            .map_err(|e| reject("replay", e.to_string()))?;
        self.sent_before[i] = Some([w.sent, before.map_or(0, |b| b[0])]);
        Ok(WindowEffect {
            loss_moved: this.loss_moves() + reverse.loss_moves() != moves,
            wants_evidence: this.wants_evidence(Some(reverse), &self.cfg.links),
        })
    }

    /// Takes a liveness event; it acts on the next computation (which the caller runs at once).
    pub fn liveness(
        &mut self,
        e: &pb::LivenessEvent,
        reporter: &SiteId,
        now: TimestampMs,
    ) -> Result<Liveness, ControllerError> {
        if e.from != reporter.as_str() {
            return Err(reject(
                "malformed",
                format!("`{reporter}` reported liveness from `{}`", e.from),
            ));
        }
        let i = self.link_index(&e.from, &e.to)?;
        let event = match pb::LinkLiveness::try_from(e.state) {
            Ok(pb::LinkLiveness::Down) => Liveness::Down,
            Ok(pb::LinkLiveness::Up) => Liveness::Up,
            _ => return Err(reject("malformed", format!("liveness state {}", e.state))),
        };
        // The prober's own time of the event (its windows are on the same clock), never later
        // than ours.
        let at = if e.at_unix_ms == 0 {
            now
        } else {
            e.at_unix_ms.min(now)
        };
        self.states[i].liveness(event, at, &self.cfg.links);
        Ok(event)
    }

    /// Refreshes link views at `now` and computes the next table.
    pub fn compute(&mut self, now: TimestampMs) -> Computation {
        let n = self.world.inventory.len();
        let mut links = LinkTable::new(n);
        // Links with few probes of their own lean on the mesh's loss (see `topology::link`).
        let prior = topology::link::pooled_loss(&self.states);
        self.prior = prior;
        for a in 0..n {
            for b in a + 1..n {
                let (ab, ba) = pair_mut(&mut self.states, a * n + b, b * n + a);
                LinkState::settle_pair(ab, ba, prior, &self.cfg.links);
            }
        }
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    let reverse = Some(&self.states[b * n + a]);
                    let view = self.states[a * n + b].view_paired(reverse, now, &self.cfg.links, prior);
                    links.set(a as topology::SiteIdx, b as topology::SiteIdx, view);
                }
            }
        }
        self.lift_expired(now);
        self.judge_sites(&links, now);
        self.world.links = Arc::new(links);
        let c = self.engine.compute(&self.world, now);
        self.table = Some(c.table.clone());
        c
    }

    /// Lifts the timed drains whose window has ended, logging each; the table computed next
    /// gives their sites back.
    fn lift_expired(&mut self, now: TimestampMs) {
        let lifted = self.world.drains.lift_expired(now);
        if lifted.is_empty() {
            return;
        }
        self.engine.invalidate();
        for d in lifted {
            let detail = lifted_detail(&d, now);
            self.log_drain(DrainEvent {
                at_ms: now,
                action: DrainAction::Undrained,
                target: d.target,
                author: "expiry".into(),
                origin: d.origin,
                reason: d.reason,
                forced: false,
                detail,
            });
        }
    }

    /// Runs the automatic drain policy on the links about to be routed on: in `enforce` it
    /// drains and undrains (the table computed next carries the change); in every mode it
    /// records which sites are sick, with a verdict, and what changed since the last time.
    /// A drained sick site is announced at once, without the wait for agents an operator's
    /// drain makes: most of its links are already failing, and new sessions should stop
    /// landing on it now.
    fn judge_sites(&mut self, links: &LinkTable, now: TimestampMs) {
        let cfg = &self.cfg.auto_drain;
        let inv = &self.world.inventory;
        let health = site_health(inv, links, cfg);
        let actions = self.auto.evaluate(
            inv,
            &health,
            &mut self.world.drains,
            cfg,
            &self.cfg.guardrails,
            now,
        );
        let mut decided: HashMap<SiteId, Verdict> = HashMap::new();
        let mut events = Vec::new();
        let mut logged = Vec::new();
        for a in actions {
            match a {
                AutoAction::Recommended { site, .. } => {
                    decided.insert(site, Verdict::Recommended);
                }
                AutoAction::Held { site, rule, detail } => {
                    decided.insert(site, Verdict::Held { rule, detail });
                }
                AutoAction::Drained { site, .. } => {
                    let target = DrainTarget::Site(site.clone());
                    if let Some(d) = self.world.drains.list().iter().find(|d| d.target == target) {
                        logged.push(DrainEvent {
                            at_ms: now,
                            action: DrainAction::Drained,
                            target,
                            author: d.author.clone(),
                            origin: DrainOrigin::Automatic,
                            reason: d.reason.clone(),
                            forced: false,
                            detail: String::new(),
                        });
                    }
                    decided.insert(site, Verdict::Drained { automatic: true });
                    self.engine.invalidate();
                }
                AutoAction::Undrained { site } => {
                    logged.push(DrainEvent {
                        at_ms: now,
                        action: DrainAction::Undrained,
                        target: DrainTarget::Site(site.clone()),
                        author: "auto".into(),
                        origin: DrainOrigin::Automatic,
                        reason: String::new(),
                        forced: false,
                        detail: format!("healthy for {} s", cfg.undrain_after_ms / 1_000),
                    });
                    events.push(AutoEvent::Undrained(site));
                    self.engine.invalidate();
                }
            }
        }
        let drained = self.world.drains.drained_mask(inv);
        let sick: Vec<SickSite> = inv
            .sites()
            .iter()
            .zip(&health)
            .zip(drained)
            .filter(|((_, h), _)| h.sick)
            .map(|((site, h), drained)| {
                let verdict = decided.remove(&site.id).unwrap_or_else(|| {
                    if drained {
                        let target = DrainTarget::Site(site.id.clone());
                        Verdict::Drained {
                            automatic: self
                                .world
                                .drains
                                .list()
                                .iter()
                                .any(|d| d.origin == DrainOrigin::Automatic && d.target == target),
                        }
                    } else {
                        Verdict::Off
                    }
                });
                SickSite {
                    site: site.id.clone(),
                    health: *h,
                    verdict,
                }
            })
            .collect();
        for s in &sick {
            let before = self.sick.iter().find(|o| o.site == s.site);
            if !before.is_some_and(|o| o.verdict.same_as(&s.verdict)) {
                events.push(AutoEvent::Judged(s.clone()));
            }
        }
        for o in &self.sick {
            if !sick.iter().any(|s| s.site == o.site) {
                events.push(AutoEvent::Recovered(o.site.clone()));
            }
        }
        self.sick = sick;
        self.auto_events = events;
        for e in logged {
            self.log_drain(e);
        }
    }

    /// Sites judged sick at the last computation, in inventory order, with what the
    /// automatic policy did or would do about each.
    pub fn sick_sites(&self) -> &[SickSite] {
        &self.sick
    }

    /// What changed in the policy's view at the last computation (taken once: the caller
    /// logs and counts them).
    pub fn take_auto_events(&mut self) -> Vec<AutoEvent> {
        std::mem::take(&mut self.auto_events)
    }

    /// Makes the next computation publish a new version (drains changed).
    pub fn invalidate(&mut self) {
        self.engine.invalidate();
    }

    /// Per site: healthy enough to count for the last-healthy-site guardrail.
    pub fn site_healthy(&self) -> Vec<bool> {
        let health = site_health(&self.world.inventory, &self.world.links, &self.cfg.auto_drain);
        health.iter().map(|h| !h.sick).collect()
    }

    /// Checks (and unless `dry_run`, records) a drain.
    /// A recorded drain, or one a guardrail refused, goes to the drain log.
    pub fn drain(&mut self, req: DrainRequest, dry_run: bool) -> Result<DrainImpact, ControllerError> {
        let healthy = self.site_healthy();
        let (inv, g) = (&self.world.inventory, &self.cfg.guardrails);
        if dry_run {
            return Ok(self.world.drains.check(inv, &healthy, g, &req)?);
        }
        let r = self.world.drains.drain(inv, &healthy, g, req.clone());
        let (action, detail) = match &r {
            Ok(impact) => {
                let mut notes = Vec::new();
                if let Some(until) = req.until_ms {
                    notes.push(format!("for {}", hms(until.saturating_sub(req.at_ms))));
                }
                if !impact.overridden.is_empty() {
                    let rules: Vec<String> = impact.overridden.iter().map(ToString::to_string).collect();
                    notes.push(format!("overrode {}", rules.join(", ")));
                }
                (DrainAction::Drained, notes.join("; "))
            }
            Err(topology::TopologyError::GuardrailRefused { rule, detail }) => {
                (DrainAction::Refused, format!("{rule}: {detail}"))
            }
            Err(_) => return r.map_err(ControllerError::from),
        };
        self.log_drain(DrainEvent {
            at_ms: req.at_ms,
            action,
            target: req.target,
            author: req.author,
            origin: req.origin,
            reason: req.reason,
            forced: req.force && action == DrainAction::Drained,
            detail,
        });
        r.map_err(ControllerError::from)
    }

    /// Logs a drain the controller refused for a reason of its own (a link drain that would
    /// cut pairs off), as the guardrails' refusals are.
    pub fn log_refusal(&mut self, req: &DrainRequest, detail: String) {
        self.log_drain(DrainEvent {
            at_ms: req.at_ms,
            action: DrainAction::Refused,
            target: req.target.clone(),
            author: req.author.clone(),
            origin: req.origin,
            reason: req.reason.clone(),
            forced: false,
            detail,
        });
    }

    /// Lifts a drain on behalf of `author` at `now`, and logs it with the reason of the drain
    /// lifted.
    pub fn undrain(
        &mut self,
        target: &DrainTarget,
        author: &str,
        now: TimestampMs,
    ) -> Result<Drain, ControllerError> {
        let d = self.world.drains.undrain(target)?;
        self.log_drain(DrainEvent {
            at_ms: now,
            action: DrainAction::Undrained,
            target: target.clone(),
            author: author.to_string(),
            origin: DrainOrigin::Operator,
            reason: d.reason.clone(),
            forced: false,
            detail: lifted_detail(&d, now),
        });
        Ok(d)
    }

    /// Make before break: until [`Core::release_unready`], these sites are drained for routing
    /// (nothing relays through them) but not yet announced as drained to agents, so the paths
    /// that avoid them reach every agent before their own agents turn unready.
    pub fn hold_unready(&mut self, sites: &[SiteId]) {
        self.held_ready.extend(sites.iter().cloned());
    }

    /// Announces held drains (the next table marks those sites drained).
    pub fn release_unready(&mut self) {
        self.held_ready.clear();
        self.engine.invalidate();
    }

    /// Sites announced to agents as drained: drained, minus those held by make before break.
    pub fn announced_drained_sites(&self) -> Vec<SiteId> {
        self.drained_sites()
            .into_iter()
            .filter(|s| !self.held_ready.contains(s))
            .collect()
    }

    /// Sites drained now, regions expanded.
    pub fn drained_sites(&self) -> Vec<SiteId> {
        let mask = self.world.drains.drained_mask(&self.world.inventory);
        self.world
            .inventory
            .sites()
            .iter()
            .zip(mask)
            .filter(|(_, d)| *d)
            .map(|(s, _)| s.id.clone())
            .collect()
    }
}

/// What an undrain's log line says of the drain it lifted.
fn lifted_detail(d: &Drain, now: TimestampMs) -> String {
    format!(
        "lifted {}'s drain ({}) after {}",
        d.author,
        origin_label(d.origin),
        hms(now.saturating_sub(d.at_ms))
    )
}

/// A span of milliseconds as `1h02m03s`.
fn hms(ms: u64) -> String {
    let secs = ms / 1_000;
    format!("{}h{:02}m{:02}s", secs / 3_600, secs / 60 % 60, secs % 60)
}

/// A table's `(epoch, version)` on the wire.
pub fn version_pb(id: topology::TableId) -> pb::TableVersion {
    pb::TableVersion {
        epoch: id.epoch.0,
        version: id.version.0,
    }
}

/// A human sentence for why a row is on its path.
pub fn reason_text(r: &Reason) -> String {
    match r {
        Reason::NoRoute => "no usable path".into(),
        Reason::Direct => "direct is best".into(),
        Reason::RelayBeatsDirect { direct_cost } => format!("relay beats direct ({direct_cost:.1} ms)"),
        Reason::DirectUnusable => "direct link unusable (down, unmeasured or drained)".into(),
        Reason::Kept {
            candidate_cost,
            gain_needed,
            streak,
            patience,
        } => {
            let patient = if *patience > *streak {
                format!(" ({patience}× by the patient margin)")
            } else {
                String::new()
            };
            format!(
                "kept: candidate {candidate_cost:.1} ms has won {streak}× but needs {gain_needed:.1} ms{patient}"
            )
        }
        Reason::Switched(s) => format!("switched: {s}"),
        Reason::MeetsVoice { cheapest_cost } => {
            format!("meets the voice thresholds; the cheapest path ({cheapest_cost:.1} ms) does not")
        }
    }
}

fn path(sites: &[SiteId], cost: f32, q: &topology::Quality) -> pb::RoutePath {
    pb::RoutePath {
        sites: sites.iter().map(ToString::to_string).collect(),
        cost_ms: f64::from(cost),
        mos: q.mos,
        r_factor: q.r_factor,
    }
}

/// One row on the wire.
pub fn row(e: &RouteEntry) -> pb::RouteRow {
    pb::RouteRow {
        dst: e.dst.to_string(),
        primary: Some(path(&e.primary, e.primary_cost, &e.primary_quality)),
        backup: match (&e.backup, e.backup_cost, &e.backup_quality) {
            (Some(b), Some(c), Some(q)) => Some(path(b, c, q)),
            _ => None,
        },
        backup_disjoint: e.backup_disjoint,
        reason: reason_text(&e.reason),
    }
}

/// One drain on the wire.
pub fn drain_entry(d: &Drain) -> pb::DrainEntry {
    let (kind, name) = target_parts(&d.target);
    pb::DrainEntry {
        kind: kind.into(),
        name,
        reason: d.reason.clone(),
        author: d.author.clone(),
        at_unix_ms: d.at_ms,
        origin: origin_label(d.origin).into(),
        forced: d.forced,
        until_unix_ms: d.until_ms.unwrap_or(0),
    }
}

/// One entry of the drain log on the wire.
pub fn drain_log_entry(e: &DrainEvent) -> pb::DrainLogEntry {
    let (kind, name) = target_parts(&e.target);
    pb::DrainLogEntry {
        at_unix_ms: e.at_ms,
        action: e.action.label().into(),
        kind: kind.into(),
        name,
        author: e.author.clone(),
        origin: origin_label(e.origin).into(),
        reason: e.reason.clone(),
        forced: e.forced,
        detail: e.detail.clone(),
    }
}

/// A drain target as the wire's `kind` and `name`.
fn target_parts(t: &DrainTarget) -> (&'static str, String) {
    match t {
        DrainTarget::Site(s) => ("site", s.to_string()),
        DrainTarget::Region(r) => ("region", r.to_string()),
        DrainTarget::Link(a, b) => ("link", format!("{a}<->{b}")),
    }
}

fn origin_label(o: DrainOrigin) -> &'static str {
    match o {
        DrainOrigin::Operator => "operator",
        DrainOrigin::Automatic => "auto",
    }
}

/// The update an agent of `site` receives for `table`.
pub fn site_update(
    core: &Core,
    table: &RouteTable,
    site: &SiteId,
    nonce: String,
) -> Result<pb::RouteUpdate, ControllerError> {
    let st = table.site_table(site)?;
    Ok(pb::RouteUpdate {
        version: Some(version_pb(table.id())),
        nonce,
        site: site.to_string(),
        computed_unix_ms: st.computed_at_ms,
        rows: st.rows.iter().map(row).collect(),
        drains: core.world.drains.list().iter().map(drain_entry).collect(),
        drained_sites: core
            .announced_drained_sites()
            .iter()
            .map(ToString::to_string)
            .collect(),
        known_sites: core
            .world
            .inventory
            .sites()
            .iter()
            .map(|s| s.id.to_string())
            .collect(),
        max_relays: u32::from(core.cfg.engine.paths.max_relays),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::SiteConfig;

    #[test]
    fn a_kept_pair_says_how_far_its_candidate_has_come() {
        let kept = |streak, patience| {
            reason_text(&Reason::Kept {
                candidate_cost: 48.0,
                gain_needed: 5.0,
                streak,
                patience,
            })
        };
        assert_eq!(kept(2, 2), "kept: candidate 48.0 ms has won 2× but needs 5.0 ms");
        assert_eq!(
            kept(0, 37),
            "kept: candidate 48.0 ms has won 0× but needs 5.0 ms (37× by the patient margin)"
        );
    }

    /// Active sites of capacity 100, as (id, region).
    fn site_configs(sites: &[(&str, &str)]) -> Vec<SiteConfig> {
        sites
            .iter()
            .map(|(id, region)| SiteConfig {
                id: (*id).into(),
                region: (*region).into(),
                provider: "metal".into(),
                lat: 0.0,
                lon: 0.0,
                capacity: 100,
                role: topology::Role::Active,
            })
            .collect()
    }

    fn core() -> Core {
        let cfg = ControllerConfig {
            sites: site_configs(&[("a", "r-a"), ("b", "r-b"), ("c", "r-c")]),
            ..Default::default()
        };
        let inv = cfg.validate().unwrap();
        Core::new(cfg, inv, &Snapshot::default()).unwrap()
    }

    fn window(from: &str, to: &str, end: u64, rtt: f64) -> pb::LinkWindow {
        pb::LinkWindow {
            from: from.into(),
            to: to.into(),
            end_unix_ms: end,
            sent: 10,
            received: 10,
            rtt_p50_ms: rtt,
            rtt_p90_ms: rtt,
            rtt_p99_ms: rtt,
            ..Default::default()
        }
    }

    fn reason<T: std::fmt::Debug>(r: Result<T, ControllerError>) -> &'static str {
        match r {
            Err(ControllerError::Rejected { reason, .. }) => {
                assert!(REJECT_REASONS.contains(&reason), "{reason}");
                reason
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn the_window_after_a_burst_may_resolve_what_the_windows_before_sent() {
        let mut c = core();
        let a = SiteId::new("a").unwrap();
        let now = 1_000_000;
        assert!(c.window(&window("a", "b", now - 3_000, 40.0), &a, now).is_ok());
        // A burst: a hundred probes, 27 still in flight at the window's end (a long link)...
        let mut burst = window("a", "b", now - 2_000, 40.0);
        (burst.sent, burst.received) = (100, 73);
        assert!(c.window(&burst, &a, now).is_ok());
        // ...which the next window, back to ten probes, resolves with its own: 37 of 10 sent.
        let mut after = window("a", "b", now - 1_000, 40.0);
        (after.sent, after.received, after.lost) = (10, 36, 1);
        assert!(c.window(&after, &a, now).is_ok(), "the burst's tail refused");
        // More than the windows before could have left in flight is still refused.
        let mut absurd = window("a", "b", now, 40.0);
        (absurd.sent, absurd.received) = (10, 131);
        assert_eq!(reason(c.window(&absurd, &a, now)), "invalid");
        // A link's first window at this controller (a new leader, a restart) may be a burst's
        // tail as well: not refused, but weighed as resolving twice its own plus ten, at the
        // loss it reports.
        let site_c = SiteId::new("c").unwrap();
        let mut first = window("c", "b", now, 40.0);
        (first.received, first.lost) = (36, 4);
        assert!(c.window(&first, &site_c, now).is_ok());
        let taken = c.link_state(2, 1).unwrap().history().last().copied().unwrap();
        assert_eq!((taken.sent, taken.received), (30, 27));
        // From then on the windows before bound it: more is refused.
        let mut next = window("c", "b", now + 1, 40.0);
        next.received = 31;
        assert_eq!(reason(c.window(&next, &site_c, now + 1)), "invalid");
        // Counts that do not even add up are refused on a first window too.
        let mut huge = window("a", "c", now, 40.0);
        (huge.received, huge.lost) = (u32::MAX, 1);
        assert_eq!(reason(c.window(&huge, &a, now)), "invalid");
    }

    #[test]
    fn bad_windows_are_refused_with_a_reason_and_change_nothing() {
        let mut c = core();
        let a = SiteId::new("a").unwrap();
        let now = 1_000_000;
        assert!(c.window(&window("a", "b", now - 1_000, 40.0), &a, now).is_ok());
        assert_eq!(
            reason(c.window(&window("a", "zz", now, 40.0), &a, now)),
            "unknown_site"
        );
        assert_eq!(
            reason(c.window(&window("a", "a", now, 40.0), &a, now)),
            "self_link"
        );
        assert_eq!(
            reason(c.window(&window("b", "a", now, 40.0), &a, now)),
            "malformed"
        );
        assert_eq!(
            reason(c.window(&window("a", "b", now, f64::NAN), &a, now)),
            "invalid"
        );
        assert_eq!(reason(c.window(&window("a", "b", now, -3.0), &a, now)), "invalid");
        let mut more = window("a", "b", now, 40.0);
        more.received = 100;
        assert_eq!(reason(c.window(&more, &a, now)), "invalid");
        // Counts whose sum does not fit.
        let mut huge = window("a", "b", now, 40.0);
        (huge.sent, huge.received, huge.lost) = (u32::MAX, u32::MAX, 1);
        assert_eq!(reason(c.window(&huge, &a, now)), "invalid");
        assert_eq!(
            reason(c.window(&window("a", "b", now + 3_600_000, 40.0), &a, now)),
            "future"
        );
        assert_eq!(
            reason(c.window(&window("a", "b", now - 1_000, 40.0), &a, now)),
            "replay"
        );
        // Only the first window reached the link: its view says 40 ms.
        c.compute(now);
        let v = c.world().links.get(0, 1).unwrap();
        assert!((v.metrics.rtt_ms - 40.0).abs() < 1e-9);
    }

    #[test]
    fn a_rise_in_loss_asks_both_ends_for_evidence_until_it_is_confirmed() {
        let mut c = core();
        let (a, b) = (SiteId::new("a").unwrap(), SiteId::new("b").unwrap());
        let lossy = |from: &str, to: &str, end: u64, sent: u32, received: u32| pb::LinkWindow {
            sent,
            received,
            lost: sent - received,
            ..window(from, to, end, 40.0)
        };
        let start = 1_000_000;
        let mut now = start;
        let none = WindowEffect::default();
        for _ in 0..300 {
            now += 1_000;
            assert_eq!(c.window(&window("a", "b", now, 40.0), &a, now).unwrap(), none);
            assert_eq!(
                c.window(&window("b", "a", now + 300, 40.0), &b, now + 300)
                    .unwrap(),
                none
            );
        }
        // A burst's second loses six round trips in a hundred: the rise is found at once, for
        // the pair, and held until more windows show it.
        now += 1_000;
        let found = c.window(&lossy("a", "b", now, 100, 94), &a, now).unwrap();
        assert_eq!(
            found,
            WindowEffect {
                loss_moved: true,
                wants_evidence: true
            }
        );
        // The far end's report of the same second asks too, and moves nothing more.
        let far = c
            .window(&lossy("b", "a", now + 300, 100, 94), &b, now + 300)
            .unwrap();
        assert_eq!(
            far,
            WindowEffect {
                loss_moved: false,
                wants_evidence: true
            }
        );
        // The next second loses as many: confirmed; nobody is asked any more.
        now += 1_000;
        let confirmed = c.window(&lossy("a", "b", now, 100, 95), &a, now).unwrap();
        assert_eq!(
            confirmed,
            WindowEffect {
                loss_moved: true,
                wants_evidence: false
            }
        );
        let after = c
            .window(&lossy("b", "a", now + 300, 100, 95), &b, now + 300)
            .unwrap();
        assert!(!after.wants_evidence);
    }

    #[test]
    fn report_sequence_numbers_refuse_replays_per_instance() {
        let mut c = core();
        let a = SiteId::new("a").unwrap();
        assert!(c.fresh_report(&a, 7, 1));
        assert!(c.fresh_report(&a, 7, 2));
        assert!(!c.fresh_report(&a, 7, 2), "resent after a reconnect");
        assert!(!c.fresh_report(&a, 7, 1), "replayed");
        assert!(c.fresh_report(&a, 8, 1), "a restarted prober starts over");
    }

    #[test]
    fn a_liveness_event_takes_a_link_down_at_the_next_computation() {
        let mut c = core();
        let a = SiteId::new("a").unwrap();
        let now = 1_000_000;
        c.window(&window("a", "b", now - 100, 40.0), &a, now).unwrap();
        c.compute(now);
        assert_eq!(
            c.world().links.get(0, 1).unwrap().health,
            topology::LinkHealth::Up
        );
        let ev = pb::LivenessEvent {
            from: "a".into(),
            to: "b".into(),
            state: pb::LinkLiveness::Down as i32,
            ..Default::default()
        };
        c.liveness(&ev, &a, 1).unwrap();
        c.compute(now);
        assert_eq!(
            c.world().links.get(0, 1).unwrap().health,
            topology::LinkHealth::Down
        );
        let bad = pb::LivenessEvent { state: 9, ..ev };
        assert!(c.liveness(&bad, &a, 1).is_err());
    }

    #[test]
    fn a_reload_takes_the_tunables_and_refuses_what_needs_a_restart() {
        let mut c = core();
        let now = 1_000_000;
        for (x, y) in [
            ("a", "b"),
            ("b", "a"),
            ("a", "c"),
            ("c", "a"),
            ("b", "c"),
            ("c", "b"),
        ] {
            let reporter = SiteId::new(x).unwrap();
            c.window(&window(x, y, now - 100, 40.0), &reporter, now).unwrap();
        }
        let first = c.compute(now);
        assert!(first.changed);
        // The same file: nothing to do.
        let same = c.config().clone();
        let r = c.reconfigure(same).unwrap();
        assert!(r.changed.is_empty() && !r.memory_reset, "{r:?}");
        // Tunables apply; the next computation publishes a new version.
        let mut tuned = c.config().clone();
        tuned.engine.hysteresis.switch_after += 2;
        tuned.guardrails.max_drained_fraction = 0.4;
        tuned.auto_drain.mode = topology::AutoMode::Enforce;
        let r = c.reconfigure(tuned.clone()).unwrap();
        assert_eq!(
            (r.changed.as_slice(), r.memory_reset),
            (&["engine", "guardrails", "auto_drain"][..], false)
        );
        assert_eq!(c.config(), &tuned);
        let next = c.compute(now + 1_000);
        assert!(next.changed);
        assert_eq!(next.table.id().version.0, first.table.id().version.0 + 1);
        // A new relay limit: the switching memory starts afresh.
        let mut fewer = c.config().clone();
        fewer.engine.paths.max_relays = 1;
        assert!(c.reconfigure(fewer).unwrap().memory_reset);
        // What the daemon was built around: refused whole, the keys named.
        let before = c.config().clone();
        let mut moved = before.clone();
        moved.grpc_listen = "127.0.0.1:1".parse().unwrap();
        moved.tick_ms = 500;
        moved.engine.hysteresis.switch_after = 9;
        let e = c.reconfigure(moved).unwrap_err().to_string();
        assert!(
            e.contains("grpc_listen, tick_ms cannot change without a restart"),
            "{e}"
        );
        // An invalid file: refused by the checks a start makes.
        let mut bad = before.clone();
        bad.journal_rows = 2_000_000;
        assert!(
            c.reconfigure(bad)
                .unwrap_err()
                .to_string()
                .contains("journal_rows")
        );
        // The journal's file is the store's: a restart to move it.
        let mut filed = before.clone();
        filed.store.journal = Some("/var/lib/axon/journal.jsonl".into());
        let e = c.reconfigure(filed.clone()).unwrap_err().to_string();
        assert!(e.contains("store cannot change without a restart"), "{e}");
        filed.store.snapshot = filed.store.journal.clone();
        let e = filed.validate().unwrap_err().to_string();
        assert!(
            e.contains("store.journal and store.snapshot must be two files"),
            "{e}"
        );
        assert_eq!(c.config(), &before, "a refused reload changes nothing");
    }

    #[test]
    fn a_drain_announces_unready_only_after_the_paths_that_avoid_it() {
        let mut c = core();
        c.compute(1_000);
        let b = SiteId::new("b").unwrap();
        let req = DrainRequest {
            target: DrainTarget::Site(b.clone()),
            reason: "maintenance".into(),
            author: "ops".into(),
            at_ms: 1_000,
            origin: topology::DrainOrigin::Operator,
            force: true,
            until_ms: None,
        };
        let impact = c.drain(req, false).unwrap();
        c.hold_unready(&impact.sites);
        c.invalidate();
        let first = c.compute(2_000).table;
        assert_eq!(c.drained_sites(), vec![b.clone()], "routing already avoids b");
        assert!(
            site_update(&c, &first, &b, "n".into())
                .unwrap()
                .drained_sites
                .is_empty(),
            "not yet announced"
        );
        c.release_unready();
        let second = c.compute(3_000);
        assert!(second.changed && second.table.id().version > first.id().version);
        assert_eq!(
            site_update(&c, &second.table, &b, "n".into())
                .unwrap()
                .drained_sites,
            vec!["b".to_string()]
        );
    }

    #[test]
    fn drains_survive_a_restart_and_versions_continue() {
        let mut c = core();
        c.compute(1_000);
        let req = DrainRequest {
            target: DrainTarget::Site(SiteId::new("b").unwrap()),
            reason: "maintenance".into(),
            author: "ops".into(),
            at_ms: 1_000,
            origin: topology::DrainOrigin::Operator,
            force: true,
            until_ms: None,
        };
        c.drain(req, false).unwrap();
        c.invalidate();
        let v1 = c.compute(2_000).table.id().version;
        let snap = c.snapshot();
        let again = Core::new(c.config().clone(), c.world().inventory.clone(), &snap).unwrap();
        assert_eq!(again.drained_sites(), vec![SiteId::new("b").unwrap()]);
        let mut again = again;
        assert!(again.compute(3_000).table.id().version > v1);
    }

    /// Five sites in three regions (`a`, `b` in r1; `c`, `d` in r2; `e` alone in r3) under
    /// the automatic drain policy `auto`.
    fn core_with_auto(auto: topology::AutoDrainConfig, guardrails: topology::GuardrailConfig) -> Core {
        let cfg = ControllerConfig {
            sites: site_configs(&[("a", "r1"), ("b", "r1"), ("c", "r2"), ("d", "r2"), ("e", "r3")]),
            auto_drain: auto,
            guardrails,
            ..Default::default()
        };
        let inv = cfg.validate().unwrap();
        Core::new(cfg, inv, &Snapshot::default()).unwrap()
    }

    /// One round of reports at `now`: every link up, but those of the `sick` sites, whose
    /// ends report them down (or, with `heal`, up again).
    fn reports(c: &mut Core, now: u64, sick: &[&str], heal: &[&str]) {
        let ids = ["a", "b", "c", "d", "e"];
        for x in ids {
            let reporter = SiteId::new(x).unwrap();
            for y in ids.iter().filter(|y| **y != x) {
                let state = if sick.contains(&x) || sick.contains(y) {
                    pb::LinkLiveness::Down
                } else if heal.contains(&x) || heal.contains(y) {
                    pb::LinkLiveness::Up
                } else {
                    c.window(&window(x, y, now - 100, 40.0), &reporter, now).unwrap();
                    continue;
                };
                let ev = pb::LivenessEvent {
                    from: x.into(),
                    to: (*y).into(),
                    state: state as i32,
                    at_unix_ms: now,
                    ..Default::default()
                };
                c.liveness(&ev, &reporter, now).unwrap();
                if state == pb::LinkLiveness::Up {
                    c.window(&window(x, y, now - 100, 40.0), &reporter, now).unwrap();
                }
            }
        }
    }

    fn drained_in(c: &Core, table: &RouteTable, site: &str) -> Vec<String> {
        site_update(c, table, &SiteId::new(site).unwrap(), String::new())
            .unwrap()
            .drained_sites
    }

    #[test]
    fn enforce_drains_a_sick_site_at_once_and_lifts_the_drain_once_it_is_healthy() {
        let loose = topology::GuardrailConfig {
            min_active_regions: 1,
            max_drained_fraction: 1.0,
        };
        let auto = topology::AutoDrainConfig {
            mode: topology::AutoMode::Enforce,
            cooldown_ms: 0,
            undrain_after_ms: 10_000,
            ..Default::default()
        };
        let mut c = core_with_auto(auto, loose);
        let t = 1_000_000;
        reports(&mut c, t, &[], &[]);
        c.compute(t);
        assert!(c.sick_sites().is_empty() && c.take_auto_events().is_empty());

        reports(&mut c, t + 1_000, &["a"], &[]);
        let table = c.compute(t + 1_000);
        assert!(table.changed);
        let a = SiteId::new("a").unwrap();
        assert_eq!(c.sick_sites().len(), 1, "{:?}", c.sick_sites());
        assert_eq!(c.sick_sites()[0].site, a);
        assert_eq!(c.sick_sites()[0].health.bad_peers, 4);
        assert_eq!(c.sick_sites()[0].verdict, Verdict::Drained { automatic: true });
        assert!(matches!(&c.take_auto_events()[..], [AutoEvent::Judged(s)] if s.site == a));
        // Drained for routing and announced in the same table.
        assert_eq!(c.drained_sites(), vec![a.clone()]);
        assert_eq!(drained_in(&c, &table.table, "b"), vec!["a".to_string()]);
        let drain = &c.world().drains.list()[0];
        assert_eq!(drain.origin, DrainOrigin::Automatic);
        assert!(drain.reason.contains("4 of 4 peers"), "{}", drain.reason);

        // Still sick: nothing new to say.
        reports(&mut c, t + 2_000, &["a"], &[]);
        c.compute(t + 2_000);
        assert!(c.take_auto_events().is_empty());

        // A restart keeps the drain (it is in the snapshot).
        let mut c = Core::new(c.config().clone(), c.world().inventory.clone(), &c.snapshot()).unwrap();
        assert_eq!(c.drained_sites(), vec![a.clone()]);
        reports(&mut c, t + 3_000, &[], &["a"]);
        c.compute(t + 3_000);
        assert!(c.sick_sites().is_empty());
        assert!(
            c.take_auto_events().is_empty(),
            "the restarted core had not judged a sick"
        );
        reports(&mut c, t + 12_000, &[], &[]);
        c.compute(t + 12_000);
        assert_eq!(c.drained_sites(), vec![a.clone()], "healthy for 9 s only");
        reports(&mut c, t + 13_000, &[], &[]);
        let table = c.compute(t + 13_000);
        assert!(matches!(&c.take_auto_events()[..], [AutoEvent::Undrained(s)] if *s == a));
        assert!(table.changed && c.drained_sites().is_empty());
        assert!(drained_in(&c, &table.table, "b").is_empty());
        assert!(c.snapshot().drains.is_empty());
        // Both acts are in the drain log, which the restart kept.
        let log: Vec<(DrainAction, &str, DrainOrigin, u64)> = c
            .drain_log(10)
            .map(|e| (e.action, e.author.as_str(), e.origin, e.at_ms))
            .collect();
        assert_eq!(
            log,
            [
                (DrainAction::Undrained, "auto", DrainOrigin::Automatic, t + 13_000),
                (DrainAction::Drained, "auto", DrainOrigin::Automatic, t + 1_000),
            ]
        );
        assert!(c.drain_log(1).next().unwrap().detail.contains("healthy for 10 s"));
    }

    #[test]
    fn a_timed_drain_is_lifted_by_the_first_computation_after_its_window() {
        let mut c = core();
        c.compute(1_000);
        let req = DrainRequest {
            target: DrainTarget::Site(SiteId::new("b").unwrap()),
            reason: "kernel upgrade".into(),
            author: "ops".into(),
            at_ms: 1_000,
            origin: DrainOrigin::Operator,
            force: true,
            until_ms: Some(7_201_000),
        };
        c.drain(req, false).unwrap();
        c.invalidate();
        let drained = c.compute(2_000);
        assert_eq!(c.drained_sites(), vec![SiteId::new("b").unwrap()]);
        assert_eq!(
            site_update(&c, &drained.table, &SiteId::new("a").unwrap(), String::new())
                .unwrap()
                .drains[0]
                .until_unix_ms,
            7_201_000
        );
        assert!(!c.compute(7_200_999).changed);
        assert_eq!(c.drained_sites().len(), 1);
        let lifted = c.compute(7_201_000);
        assert!(lifted.changed && c.drained_sites().is_empty());
        let log: Vec<_> = c.drain_log(2).collect();
        assert_eq!(
            (log[0].action, log[0].author.as_str(), log[0].reason.as_str()),
            (DrainAction::Undrained, "expiry", "kernel upgrade")
        );
        assert_eq!(log[0].detail, "lifted ops's drain (operator) after 2h00m00s");
        assert!(log[1].detail.starts_with("for 2h00m00s"), "{}", log[1].detail);
    }

    #[test]
    fn the_drain_log_keeps_drains_undrains_and_refusals_with_who_and_why() {
        let mut c = core_with_auto(
            topology::AutoDrainConfig::default(),
            topology::GuardrailConfig {
                min_active_regions: 3,
                max_drained_fraction: 1.0,
            },
        );
        c.compute(1_000);
        let req = |target: &str, author: &str, at_ms: u64, force: bool| DrainRequest {
            target: DrainTarget::Site(SiteId::new(target).unwrap()),
            reason: format!("work on {target}"),
            author: author.into(),
            at_ms,
            origin: DrainOrigin::Operator,
            force,
            until_ms: None,
        };
        // e is its region's last site: refused, then forced.
        assert!(c.drain(req("e", "alice", 2_000, false), false).is_err());
        c.drain(req("e", "alice", 3_000, true), false).unwrap();
        // A dry run and a drain of nothing new are not acts.
        c.drain(req("a", "bob", 4_000, false), true).unwrap();
        assert!(c.drain(req("e", "bob", 4_500, false), false).is_err());
        let e = DrainTarget::Site(SiteId::new("e").unwrap());
        c.undrain(&e, "carol", 3_725_000).unwrap();
        let log: Vec<_> = c.drain_log(10).collect();
        let acts: Vec<(DrainAction, &str, bool)> = log
            .iter()
            .map(|e| (e.action, e.author.as_str(), e.forced))
            .collect();
        assert_eq!(
            acts,
            [
                (DrainAction::Undrained, "carol", false),
                (DrainAction::Drained, "alice", true),
                (DrainAction::Refused, "alice", false),
            ]
        );
        assert_eq!(log[0].reason, "work on e", "an undrain names the drain it lifted");
        assert_eq!(log[0].detail, "lifted alice's drain (operator) after 1h02m02s");
        assert_eq!(
            log[1].detail,
            "overrode last_healthy_site_in_region, min_active_regions"
        );
        assert!(
            log[2].detail.starts_with("last_healthy_site_in_region: "),
            "{}",
            log[2].detail
        );

        // Kept across a restart, and bounded by drain_log_rows.
        let snap = c.snapshot();
        assert_eq!(snap.drain_log.len(), 3);
        let mut cfg = c.config().clone();
        cfg.drain_log_rows = 2;
        let mut again = Core::new(cfg, c.world().inventory.clone(), &snap).unwrap();
        assert_eq!(
            again.drain_log(10).count(),
            3,
            "what was kept is not dropped at start"
        );
        again.drain(req("a", "dave", 5_000, false), false).unwrap();
        let authors: Vec<&str> = again.drain_log(10).map(|e| e.author.as_str()).collect();
        assert_eq!(authors, ["dave", "carol"]);
    }

    #[test]
    fn recommend_names_sick_sites_and_what_the_guardrails_say_and_drains_nothing() {
        let guard = topology::GuardrailConfig {
            min_active_regions: 3,
            max_drained_fraction: 1.0,
        };
        let mut c = core_with_auto(topology::AutoDrainConfig::default(), guard.clone());
        let t = 1_000_000;
        reports(&mut c, t, &[], &[]);
        c.compute(t);
        reports(&mut c, t + 1_000, &["a", "e"], &[]);
        let table = c.compute(t + 1_000);
        let verdicts: Vec<(&str, &'static str)> = c
            .sick_sites()
            .iter()
            .map(|s| (s.site.as_str(), s.verdict.label()))
            .collect();
        // e is its region's only site: draining it would leave two regions of three.
        assert_eq!(verdicts, [("a", "recommended"), ("e", "held")]);
        assert!(matches!(
            &c.sick_sites()[1].verdict,
            Verdict::Held {
                rule: Guardrail::MinActiveRegions,
                ..
            }
        ));
        assert_eq!(c.take_auto_events().len(), 2);
        assert!(c.drained_sites().is_empty());
        assert!(drained_in(&c, &table.table, "b").is_empty());
        // An operator drains a on the recommendation: its verdict says so, once.
        let req = DrainRequest {
            target: DrainTarget::Site(SiteId::new("a").unwrap()),
            reason: "sick".into(),
            author: "ops".into(),
            at_ms: t + 1_500,
            origin: DrainOrigin::Operator,
            force: false,
            until_ms: None,
        };
        c.drain(req, false).unwrap();
        reports(&mut c, t + 2_000, &["a", "e"], &[]);
        c.compute(t + 2_000);
        assert_eq!(c.sick_sites()[0].verdict.label(), "drained_by_operator");
        assert!(matches!(&c.take_auto_events()[..], [AutoEvent::Judged(s)] if s.site.as_str() == "a"));
        // e recovers.
        reports(&mut c, t + 3_000, &["a"], &["e"]);
        c.compute(t + 3_000);
        assert!(matches!(&c.take_auto_events()[..], [AutoEvent::Recovered(s)] if s.as_str() == "e"));

        // Off judges and reports, and does nothing.
        let off = topology::AutoDrainConfig {
            mode: topology::AutoMode::Off,
            ..Default::default()
        };
        let mut c = core_with_auto(off, guard);
        reports(&mut c, t, &[], &[]);
        c.compute(t);
        reports(&mut c, t + 1_000, &["a"], &[]);
        c.compute(t + 1_000);
        assert_eq!(c.sick_sites()[0].verdict, Verdict::Off);
        assert!(c.drained_sites().is_empty());
    }
}

/// Parses one what-if change as `axonctl whatif` writes it: `drain-site S`, `drain-region R`,
/// `cut-link A B`, `promote S`, `add-site ID REGION LAT LON [CAPACITY]` (links to the new site
/// are estimated from distance).
pub fn parse_change(text: &str) -> Result<topology::Change, ControllerError> {
    let bad = |detail: String| ControllerError::Invalid {
        field: "change",
        detail,
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let site = |s: &str| SiteId::new(s).map_err(|e| bad(e.to_string()));
    let num = |s: &str| {
        s.parse::<f64>()
            .map_err(|_| bad(format!("`{s}` is not a number")))
    };
    Ok(match words.as_slice() {
        ["drain-site", s] => topology::Change::DrainSite { site: site(s)? },
        ["drain-region", r] => topology::Change::DrainRegion {
            region: topology::RegionId::new(*r).map_err(|e| bad(e.to_string()))?,
        },
        ["cut-link", a, b] => topology::Change::CutLink {
            a: site(a)?,
            b: site(b)?,
        },
        ["promote", s] => topology::Change::PromoteShadow { site: site(s)? },
        ["add-site", id, region, lat, lon, rest @ ..] if rest.len() <= 1 => {
            let capacity = match rest.first() {
                Some(c) => c.parse::<u32>().map_err(|_| bad(format!("capacity `{c}`")))?,
                None => 1_000,
            };
            let s = topology::Site::new(id, region, "metal", num(lat)?, num(lon)?, capacity)
                .map_err(|e| bad(e.to_string()))?;
            topology::Change::AddSite {
                site: s,
                links: Vec::new(),
            }
        }
        _ => {
            return Err(bad(format!(
                "`{text}`: expected drain-site S | drain-region R | cut-link A B | promote S | add-site ID REGION LAT LON [CAPACITY]"
            )));
        }
    })
}

/// Runs a what-if on a copy of the world and summarises it for the wire.
pub fn what_if_reply(
    world: &World,
    cfg: &ControllerConfig,
    changes: &[topology::Change],
) -> Result<pb::WhatIfReply, ControllerError> {
    let r = topology::what_if(world, &cfg.engine, &cfg.guardrails, changes)?;
    let worst = r
        .worse
        .iter()
        .map(|d| f64::from(d.cost_after - d.cost_before))
        .fold(0.0, f64::max);
    let mut summary = Vec::new();
    let show = |d: &topology::whatif::PairDelta| {
        format!(
            "{} → {}: {} ({:.1} ms) → {} ({:.1} ms)",
            d.src,
            d.dst,
            d.before
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("-"),
            d.cost_before,
            d.after
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("-"),
            d.cost_after
        )
    };
    summary.extend(r.worse.iter().take(5).map(|d| format!("worse  {}", show(d))));
    summary.extend(r.better.iter().take(5).map(|d| format!("better {}", show(d))));
    summary.extend(
        r.lost
            .iter()
            .take(5)
            .map(|(a, b)| format!("unreachable {a} → {b}")),
    );
    summary.extend(r.guardrail_warnings.iter().map(|w| format!("guardrail {w}")));
    Ok(pb::WhatIfReply {
        pairs_better: r.better.len() as u32,
        pairs_worse: r.worse.len() as u32,
        pairs_unreachable: r.lost.len() as u32,
        worst_increase_ms: worst,
        capacity_left: if r.capacity_before == 0 {
            0.0
        } else {
            r.capacity_after as f64 / r.capacity_before as f64
        },
        summary,
    })
}

#[cfg(test)]
mod what_if_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn changes_parse_and_bad_ones_say_what_is_expected() {
        assert!(matches!(
            parse_change("drain-site aws-use1").unwrap(),
            topology::Change::DrainSite { .. }
        ));
        assert!(matches!(
            parse_change("drain-region us-east").unwrap(),
            topology::Change::DrainRegion { .. }
        ));
        assert!(matches!(
            parse_change("cut-link a b").unwrap(),
            topology::Change::CutLink { .. }
        ));
        assert!(matches!(
            parse_change("add-site x r1 10 20").unwrap(),
            topology::Change::AddSite { .. }
        ));
        for bad in [
            "",
            "drain-site",
            "cut-link a",
            "add-site x r1 north 20",
            "explode a",
        ] {
            let e = parse_change(bad).unwrap_err().to_string();
            assert!(e.contains("change"), "{e}");
        }
    }
}

impl Core {
    /// Other paths for `from → to` and why each is not the primary: the direct link and every
    /// one-relay path, cheapest first (at most `limit` usable ones, plus the direct path
    /// whatever its state).
    pub fn alternatives(
        &self,
        from: &SiteId,
        to: &SiteId,
        limit: usize,
    ) -> Result<Vec<pb::Alternative>, ControllerError> {
        let w = &self.world;
        let inv = &w.inventory;
        let (s, d) = (inv.require(from)?, inv.require(to)?);
        let weights = &self.cfg.engine.cost;
        let drained = w.drains.drained_mask(inv);
        let primary = self.table.as_ref().and_then(|t| t.entry(from, to).ok().flatten());
        let primary_cost = primary.as_ref().map(|e| f64::from(e.primary_cost));
        let primary_path: Vec<SiteId> = primary.map(|e| e.primary).unwrap_or_default();
        let mut candidates: Vec<Vec<topology::SiteIdx>> = vec![vec![s, d]];
        for r in 0..inv.len() as topology::SiteIdx {
            if r != s && r != d {
                candidates.push(vec![s, r, d]);
            }
        }
        let mut usable = Vec::new();
        let mut direct = None;
        let drained_links = w.drains.drained_links(inv);
        for c in candidates {
            let names: Vec<SiteId> = c.iter().map(|&i| inv.site(i).id.clone()).collect();
            if names == primary_path {
                continue;
            }
            let mut why_not = None;
            for &r in &c[1..c.len() - 1] {
                let site = inv.site(r);
                if site.role == topology::Role::Shadow {
                    why_not = Some(format!("relay {} is a shadow site", site.id));
                } else if drained[usize::from(r)] {
                    why_not = Some(format!("relay {} is drained", site.id));
                }
            }
            let mut cost = weights.relay_penalty_ms * (c.len() - 2) as f64;
            let mut metrics = Vec::new();
            for pair in c.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if drained_links.contains(&(a, b)) {
                    why_not = why_not.or(Some(format!(
                        "link {} → {} is drained",
                        inv.site(a).id,
                        inv.site(b).id
                    )));
                }
                match w.links.get(a, b) {
                    None => {
                        why_not = why_not.or(Some(format!(
                            "no measurement of {} → {}",
                            inv.site(a).id,
                            inv.site(b).id
                        )))
                    }
                    Some(v) if v.health == topology::LinkHealth::Down => {
                        why_not = why_not.or(Some(format!(
                            "link {} → {} is down",
                            inv.site(a).id,
                            inv.site(b).id
                        )));
                    }
                    Some(v) => {
                        cost += weights.link_cost(&v.metrics)
                            + if v.health == topology::LinkHealth::Stale {
                                weights.stale_penalty_ms
                            } else {
                                0.0
                            };
                        metrics.push(v.metrics);
                    }
                }
            }
            let q = topology::Quality::of_path(metrics.iter());
            let path = Some(pb::RoutePath {
                sites: names.iter().map(ToString::to_string).collect(),
                cost_ms: cost,
                mos: q.mos,
                r_factor: q.r_factor,
            });
            let why_not = why_not.unwrap_or_else(|| match primary_cost {
                None => "no primary to compare with".into(),
                Some(p) if cost < p => format!(
                    "{:.1} ms cheaper, but has not yet won by the margin long enough",
                    p - cost
                ),
                Some(p) => format!("costs {:.1} ms more", cost - p),
            });
            let alt = pb::Alternative { path, why_not };
            if c.len() == 2 {
                direct = Some(alt);
            } else if metrics.len() == c.len() - 1 {
                usable.push(alt);
            }
        }
        usable.sort_by(|a, b| {
            let cost = |x: &pb::Alternative| x.path.as_ref().map_or(f64::INFINITY, |p| p.cost_ms);
            cost(a).total_cmp(&cost(b))
        });
        usable.truncate(limit);
        Ok(direct.into_iter().chain(usable).collect())
    }
}
