//! The gRPC services: probe ingest, route distribution (agent `Watch`) and the admin API.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use proto::auth::Role;
use proto::v1 as pb;
use proto::v1::{probe_report, prober_message};
use proto::wire::EncodedRouteUpdate;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use topology::{DrainOrigin, DrainRequest, DrainTarget, RegionId, SiteId};
use tracing::{debug, info, warn};

use crate::auth::Caller;
use crate::core::{drain_entry, drain_log_entry, row, version_pb};
use crate::daemon::{AgentRecord, Shared, node_load, now_ms};
use crate::error::ControllerError;
use crate::journal::{JournalQuery, JournalRow};

/// Every service over the same shared state.
#[derive(Clone)]
pub struct Services(pub Arc<Shared>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

fn site_id(s: &str) -> Result<SiteId, Status> {
    SiteId::new(s).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl pb::probe_ingest_server::ProbeIngest for Services {
    type ReportStream = BoxStream<pb::ReportAck>;

    async fn report(
        &self,
        req: Request<Streaming<pb::ProberMessage>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let caller = self
            .0
            .auth
            .require(req.extensions(), req.metadata(), Role::Prober)
            .inspect_err(|_| self.0.metrics.auth_refused.with_label_values(&["prober"]).inc())?;
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::ProberMessage {
                body: Some(prober_message::Body::Hello(h)),
            }))) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a report stream must open with ProberHello",
                ));
            }
        };
        let site = site_id(&hello.site)?;
        caller
            .may_speak_for(site.as_str())
            .inspect_err(|_| self.0.metrics.auth_refused.with_label_values(&["prober"]).inc())?;
        if self.0.core().world().inventory.index_of(&site).is_none() {
            self.0.metrics.rejected.with_label_values(&["unknown_site"]).inc();
            return Err(Status::not_found(format!("unknown site `{site}`")));
        }
        if let Some(hint) = follower_hint(&self.0)? {
            // A follower: point the prober at the leader and end the stream.
            let ack = pb::ReportAck {
                acked_through: 0,
                rejected: 0,
                leader_hint: hint,
                evidence_wanted: Vec::new(),
            };
            return Ok(Response::new(Box::pin(tokio_stream::once(Ok(ack)))));
        }
        info!(site = %site, instance = hello.instance, "prober connected");
        let (tx, rx) = mpsc::channel(64);
        let shared = self.0.clone();
        tokio::spawn(async move {
            let mut rejected = 0u64;
            loop {
                if let Ok(Some(hint)) = follower_hint(&shared) {
                    // Leadership moved while the stream was open.
                    let ack = pb::ReportAck {
                        acked_through: 0,
                        rejected,
                        leader_hint: hint,
                        evidence_wanted: Vec::new(),
                    };
                    let _ = tx.send(Ok(ack)).await;
                    break;
                }
                let m = tokio::select! {
                    _ = shared.cancel.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("controller shutting down"))).await;
                        break;
                    }
                    m = inbound.message() => match m {
                        Ok(Some(m)) => m,
                        _ => break,
                    },
                };
                let Some(prober_message::Body::Report(r)) = m.body else {
                    continue;
                };
                let seq = r.seq;
                let mut wake = false;
                let mut evidence_wanted = Vec::new();
                {
                    let mut core = shared.core();
                    if core.fresh_report(&site, hello.instance, seq) {
                        let result = match &r.body {
                            Some(probe_report::Body::Window(w)) => {
                                shared.metrics.reports.with_label_values(&["window"]).inc();
                                core.window(w, &site, now_ms()).map(|effect| {
                                    wake |= effect.loss_moved;
                                    if effect.wants_evidence {
                                        shared.metrics.evidence_wanted.inc();
                                        evidence_wanted.push(w.to.clone());
                                    }
                                })
                            }
                            Some(probe_report::Body::Liveness(e)) => {
                                shared.metrics.reports.with_label_values(&["liveness"]).inc();
                                core.liveness(e, &site, now_ms()).map(|ev| {
                                    info!(from = %e.from, to = %e.to, event = ?ev, "link liveness");
                                    wake = true;
                                })
                            }
                            None => Err(ControllerError::Rejected {
                                reason: "malformed",
                                detail: "empty report".into(),
                            }),
                        };
                        if let Err(e) = result {
                            rejected += 1;
                            let reason = match &e {
                                ControllerError::Rejected { reason, .. } => *reason,
                                _ => "invalid",
                            };
                            shared.metrics.rejected.with_label_values(&[reason]).inc();
                            debug!(site = %site, error = %e, "report rejected");
                        }
                    } else {
                        shared.metrics.rejected.with_label_values(&["replay"]).inc();
                    }
                }
                if wake {
                    shared.recompute.notify_one();
                }
                let ack = pb::ReportAck {
                    acked_through: seq,
                    rejected,
                    leader_hint: String::new(),
                    evidence_wanted,
                };
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
            }
            debug!(site = %site, "prober stream ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn version_of(p: &Option<pb::TableVersion>) -> (u64, u64) {
    p.as_ref().map_or((0, 0), |v| (v.epoch, v.version))
}

/// What a `Watch` stream sends: updates, then possibly the status that ended it.
pub(crate) type UpdateReceiver = mpsc::Receiver<Result<EncodedRouteUpdate, Status>>;

impl Services {
    /// Opens an agent's `Watch` stream: checks its hello, registers the node, and starts the
    /// task that sends its site's updates (served by [`crate::watch::WatchServer`]).
    pub(crate) async fn open_watch(
        &self,
        caller: Caller,
        mut inbound: Streaming<pb::AgentMessage>,
    ) -> Result<UpdateReceiver, Status> {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(pb::AgentMessage {
                body: Some(pb::agent_message::Body::Hello(h)),
            }))) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "a watch stream must open with AgentHello",
                ));
            }
        };
        let site = site_id(&hello.site)?;
        caller
            .may_speak_for(site.as_str())
            .inspect_err(|_| self.0.metrics.auth_refused.with_label_values(&["agent"]).inc())?;
        if hello.node.is_empty() || hello.node.len() > 128 {
            return Err(Status::invalid_argument("node name must be 1..=128 bytes"));
        }
        if self.0.core().world().inventory.index_of(&site).is_none() {
            return Err(Status::not_found(format!("unknown site `{site}`")));
        }
        let node = hello.node.clone();
        debug!(node = %node, site = %site, applied = ?version_of(&hello.applied), "agent connected");
        self.0.agents().insert(
            node.clone(),
            AgentRecord {
                site: site.to_string(),
                applied: version_of(&hello.applied),
                connected: true,
                last_seen_ms: now_ms(),
                last_error: String::new(),
                load: None,
            },
        );
        let (tx, rx) = mpsc::channel(4);
        let shared = self.0.clone();
        tokio::spawn(async move {
            let mut tables = shared.published.subscribe();
            let mut resync =
                tokio::time::interval_at(tokio::time::Instant::now() + shared.resync, shared.resync);
            let mut nonce = 0u64;
            // Send the table in force at once, then on every change and every resync period.
            let mut send_now = true;
            loop {
                if send_now {
                    send_now = false;
                    // The site's update was encoded once at publication; only the nonce is ours.
                    let body = tables
                        .borrow_and_update()
                        .as_ref()
                        .and_then(|p| p.encoded.get(&site).cloned());
                    if let Some(body) = body {
                        nonce += 1;
                        let u = EncodedRouteUpdate {
                            body,
                            nonce: format!("{node}-{nonce}"),
                        };
                        if tx.send(Ok(u)).await.is_err() {
                            break;
                        }
                        shared.metrics.updates_sent.inc();
                    }
                }
                tokio::select! {
                    _ = shared.cancel.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("controller shutting down"))).await;
                        break;
                    }
                    changed = tables.changed() => {
                        if changed.is_err() { break; }
                        send_now = true;
                    }
                    _ = resync.tick() => send_now = true,
                    m = inbound.message() => match m {
                        Ok(Some(pb::AgentMessage { body: Some(body) })) => {
                            let mut agents = shared.agents();
                            let rec = agents.entry(node.clone()).or_default();
                            rec.last_seen_ms = now_ms();
                            match body {
                                pb::agent_message::Body::Ack(a) => {
                                    rec.applied = version_of(&a.version);
                                    rec.last_error.clear();
                                }
                                pb::agent_message::Body::Nack(n) => {
                                    warn!(node = %node, error = %n.error, "agent refused an update");
                                    shared.metrics.nacks.inc();
                                    rec.last_error = n.error;
                                }
                                pb::agent_message::Body::Status(st) => match node_load(&st, now_ms()) {
                                    Ok(l) => rec.load = Some(l),
                                    Err(e) => {
                                        shared.metrics.rejected.with_label_values(&["bad_status"]).inc();
                                        debug!(node = %node, error = %e, "node status refused");
                                    }
                                },
                                pb::agent_message::Body::Hello(_) => {}
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            if let Some(rec) = shared.agents().get_mut(&node) {
                rec.connected = false;
            }
            debug!(node = %node, "agent disconnected");
        });
        Ok(rx)
    }
}

/// The author a request's credentials prove (set by the admin interceptor), if any.
fn proven_author<T>(req: &Request<T>) -> Option<String> {
    req.extensions().get::<Caller>().and_then(Caller::principal)
}

/// A drain's author: who the credentials prove, else what the request says (unauthenticated
/// controllers only), else `unknown`.
fn author(proven: Option<String>, claimed: &str) -> String {
    match proven {
        Some(p) => p,
        None if claimed.trim().is_empty() => "unknown".into(),
        None => claimed.to_string(),
    }
}

/// Computes and publishes now, off the I/O threads.
async fn publish(shared: &Arc<Shared>) -> Result<(), Status> {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || s.compute_and_publish())
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| match e {
            // The change itself was taken (the core holds it): say so, rather than leave the
            // operator to think it was refused.
            ControllerError::Store(_) => Status::unavailable(format!(
                "the change is in force on this controller, but its table could not be stored ({e}); it is published as soon as the store takes writes again"
            )),
            e => Status::internal(e.to_string()),
        })?;
    Ok(())
}

/// Waits until every connected agent applied `version` or later, or `timeout`.
async fn wait_for_agents(shared: &Shared, version: (u64, u64), timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        let behind = shared
            .agents()
            .values()
            .filter(|a| a.connected && a.applied < version)
            .count();
        if behind == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    warn!("make before break: agents still behind after {timeout:?}; announcing the drain anyway");
}

/// On a follower, the leader's URL to send a prober to (an error while no leader is known);
/// `None` on the leader.
pub fn follower_hint(shared: &Shared) -> Result<Option<String>, Status> {
    let l = shared.leadership.borrow();
    if l.is_leader() {
        return Ok(None);
    }
    match &l.leader_url {
        Some(url) => Ok(Some(url.clone())),
        None => Err(Status::unavailable("no leader elected yet")),
    }
}

/// Admin calls that read or change the leader's state are answered by the leader only: a
/// follower's link states are empty and its drains would not be the mesh's.
fn leader_only(shared: &Shared) -> Result<(), Status> {
    match follower_hint(shared)? {
        None => Ok(()),
        Some(url) => Err(Status::failed_precondition(format!(
            "this controller follows; ask the leader at {url}"
        ))),
    }
}

fn table_version(shared: &Shared) -> Option<pb::TableVersion> {
    shared.published.borrow().as_ref().map(|p| version_pb(p.id))
}

/// The routed pairs that cutting the link `a`–`b` would leave without any path, as `x → y`
/// (a what-if on a copy of the world, off the I/O threads).
async fn pairs_cut_off(shared: &Shared, a: &SiteId, b: &SiteId) -> Result<Vec<String>, Status> {
    let (world, cfg) = {
        let core = shared.core();
        (core.world().clone(), core.config().clone())
    };
    let change = topology::Change::CutLink {
        a: a.clone(),
        b: b.clone(),
    };
    let r = tokio::task::spawn_blocking(move || {
        topology::what_if(
            &world,
            &cfg.engine,
            &cfg.guardrails,
            std::slice::from_ref(&change),
        )
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(|e| topology_status(e.into()))?;
    Ok(r.lost.iter().map(|(x, y)| format!("{x} → {y}")).collect())
}

fn target(kind: &str, name: &str) -> Result<DrainTarget, Status> {
    match kind {
        "site" => Ok(DrainTarget::Site(site_id(name)?)),
        "region" => Ok(DrainTarget::Region(
            RegionId::new(name).map_err(|e| Status::invalid_argument(e.to_string()))?,
        )),
        "link" => {
            let (a, b) = name
                .split_once("<->")
                .ok_or_else(|| Status::invalid_argument(format!("link `{name}`: expected `A<->B`")))?;
            Ok(DrainTarget::link(site_id(a)?, site_id(b)?))
        }
        k => Err(Status::invalid_argument(format!(
            "drain kind `{k}`: expected site, region or link"
        ))),
    }
}

fn topology_status(e: ControllerError) -> Status {
    match e {
        ControllerError::Topology(topology::TopologyError::UnknownSite(s)) => {
            Status::not_found(format!("unknown site `{s}`"))
        }
        ControllerError::Topology(topology::TopologyError::UnknownRegion(r)) => {
            Status::not_found(format!("unknown region `{r}`"))
        }
        ControllerError::Topology(t @ topology::TopologyError::GuardrailRefused { .. }) => {
            Status::failed_precondition(t.to_string())
        }
        ControllerError::Topology(
            t @ (topology::TopologyError::AlreadyDrained(_) | topology::TopologyError::NotDrained(_)),
        ) => Status::failed_precondition(t.to_string()),
        e => Status::invalid_argument(e.to_string()),
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for Services {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let s = &self.0;
        let version = table_version(s);
        let latest = version_of(&version);
        let (sites, health, computed, routes, sick_sites, auto_drain_mode) = {
            let core = s.core();
            let world = core.world();
            let sick_sites = core
                .sick_sites()
                .iter()
                .map(|k| pb::SickSite {
                    site: k.site.to_string(),
                    peers: k.health.peers,
                    bad_peers: k.health.bad_peers,
                    verdict: k.verdict.label().into(),
                    detail: match &k.verdict {
                        crate::core::Verdict::Held { rule, detail } => format!("{rule}: {detail}"),
                        _ => String::new(),
                    },
                })
                .collect();
            let mode = match core.config().auto_drain.mode {
                topology::AutoMode::Off => "off",
                topology::AutoMode::Recommend => "recommend",
                topology::AutoMode::Enforce => "enforce",
            };
            let routes = core.table().map(|t| {
                let r = t.summary(&world.endpoint_mask());
                let n = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
                pb::RouteSummary {
                    direct: n(r.direct),
                    relayed: n(r.one_relay + r.two_relays),
                    unreachable: n(r.unreachable),
                    unprotected: n(r.backup_none),
                }
            });
            (
                world.inventory.len() as u32,
                world.links.health_counts(),
                core.table().map_or(0, |t| t.computed_at_ms()),
                routes,
                sick_sites,
                mode.to_string(),
            )
        };
        let count = |x: usize| u32::try_from(x).unwrap_or(u32::MAX);
        let agents: Vec<pb::AgentState> = s
            .agents()
            .iter()
            .map(|(node, a)| pb::AgentState {
                node: node.clone(),
                site: a.site.clone(),
                applied: Some(pb::TableVersion {
                    epoch: a.applied.0,
                    version: a.applied.1,
                }),
                connected: a.connected,
                last_seen_unix_ms: a.last_seen_ms,
                last_error: a.last_error.clone(),
                sessions: a.load.map(|l| l.sessions),
                load: a.load.map(|l| l.load),
                load_unix_ms: a.load.map_or(0, |l| l.at_ms),
            })
            .collect();
        let on_latest = agents.iter().filter(|a| version_of(&a.applied) == latest).count() as u32;
        Ok(Response::new(pb::StatusReply {
            controller: s.name.clone(),
            leader: s.leadership.borrow().is_leader(),
            table: version,
            computed_unix_ms: computed,
            sites,
            // Usable links: up, degraded (past a threshold) and stale (last metrics kept).
            links_up: count(health.up + health.degraded + health.stale),
            links_down: count(health.down),
            links_degraded: count(health.degraded),
            routes,
            agents_latest: on_latest,
            agents_behind: agents.len() as u32 - on_latest,
            agents,
            config_differs: s.config_drift.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            sick_sites,
            auto_drain_mode,
        }))
    }

    async fn sites(&self, _: Request<pb::SitesRequest>) -> Result<Response<pb::SitesReply>, Status> {
        let loads = self.0.site_loads();
        let core = self.0.core();
        let drained = core.drained_sites();
        let sites = core
            .world()
            .inventory
            .sites()
            .iter()
            .map(|s| pb::SiteInfo {
                id: s.id.to_string(),
                region: s.region.to_string(),
                provider: s.provider.clone(),
                lat: s.lat,
                lon: s.lon,
                capacity: f64::from(s.capacity),
                role: match s.role {
                    topology::Role::Active => "active".into(),
                    topology::Role::Shadow => "shadow".into(),
                },
                drained: drained.contains(&s.id),
                sick: core.sick_sites().iter().any(|k| k.site == s.id),
                nodes: loads.get(s.id.as_str()).map_or(0, |l| l.nodes),
                nodes_reporting: loads.get(s.id.as_str()).map_or(0, |l| l.reporting),
                sessions: loads.get(s.id.as_str()).map_or(0, |l| l.sessions),
                load: loads.get(s.id.as_str()).map_or(0.0, |l| l.load),
            })
            .collect();
        Ok(Response::new(pb::SitesReply { sites }))
    }

    async fn links(&self, _: Request<pb::LinksRequest>) -> Result<Response<pb::LinksReply>, Status> {
        leader_only(&self.0)?;
        let core = self.0.core();
        let w = core.world();
        let inv = &w.inventory;
        let weights = &core.config().engine.cost;
        let link_cfg = &core.config().links;
        let mut links = Vec::new();
        for (a, sa) in inv.sites().iter().enumerate() {
            for (b, sb) in inv.sites().iter().enumerate() {
                if let Some(v) = w.links.get(a as topology::SiteIdx, b as topology::SiteIdx) {
                    links.push(pb::LinkInfo {
                        from: sa.id.to_string(),
                        to: sb.id.to_string(),
                        health: format!("{:?}", v.health).to_lowercase(),
                        rtt_p50_ms: v.metrics.rtt_ms,
                        rtt_p99_ms: 0.0,
                        loss_ratio: v.metrics.loss,
                        jitter_ms: v.metrics.jitter_ms,
                        cost_ms: weights.link_cost(&v.metrics),
                        loss_se: v.metrics.loss_se,
                        cost_se_ms: weights.link_cost_se(&v.metrics),
                        wants_evidence: core
                            .link_state(a, b)
                            .is_some_and(|s| s.wants_evidence(core.link_state(b, a), link_cfg)),
                    });
                }
            }
        }
        Ok(Response::new(pb::LinksReply { links }))
    }

    async fn routes(&self, req: Request<pb::RoutesRequest>) -> Result<Response<pb::RoutesReply>, Status> {
        leader_only(&self.0)?;
        let req = req.into_inner();
        let published = self
            .0
            .published
            .borrow()
            .clone()
            .ok_or_else(|| Status::unavailable("no table yet"))?;
        let mut rows = Vec::new();
        let mut srcs: Vec<&SiteId> = published.updates.keys().collect();
        srcs.sort();
        for src in srcs {
            if !req.from.is_empty() && src.as_str() != req.from {
                continue;
            }
            for r in &published.updates[src].rows {
                if req.to.is_empty() || r.dst == req.to {
                    rows.push(pb::RouteListRow {
                        src: src.to_string(),
                        row: Some(r.clone()),
                    });
                }
            }
        }
        if rows.is_empty() && (!req.from.is_empty() || !req.to.is_empty()) {
            let core = self.0.core();
            for s in [&req.from, &req.to] {
                if !s.is_empty() && core.world().inventory.index_of(&site_id(s)?).is_none() {
                    return Err(Status::not_found(format!("unknown site `{s}`")));
                }
            }
        }
        Ok(Response::new(pb::RoutesReply {
            version: table_version(&self.0),
            rows,
        }))
    }

    async fn explain(&self, req: Request<pb::ExplainRequest>) -> Result<Response<pb::ExplainReply>, Status> {
        leader_only(&self.0)?;
        let req = req.into_inner();
        let (from, to) = (site_id(&req.from)?, site_id(&req.to)?);
        let core = self.0.core();
        let table = core.table().ok_or_else(|| Status::unavailable("no table yet"))?;
        let entry = table.entry(&from, &to).map_err(|e| topology_status(e.into()))?;
        let chosen = entry.as_ref().map(row);
        let hysteresis = entry
            .as_ref()
            .map(|e| crate::core::reason_text(&e.reason))
            .unwrap_or_default();
        let alternatives = core.alternatives(&from, &to, 5).map_err(topology_status)?;
        drop(core);
        let history = self
            .0
            .journal()
            .query(&JournalQuery {
                pair: Some((from, to)),
                limit: EXPLAIN_HISTORY,
                ..Default::default()
            })
            .rows
            .iter()
            .map(route_change)
            .collect();
        Ok(Response::new(pb::ExplainReply {
            version: table_version(&self.0),
            chosen,
            alternatives,
            hysteresis,
            history,
        }))
    }

    async fn drain(&self, req: Request<pb::DrainRequest>) -> Result<Response<pb::DrainReply>, Status> {
        leader_only(&self.0)?;
        let proven = proven_author(&req);
        let req = req.into_inner();
        if req.reason.trim().is_empty() {
            return Err(Status::invalid_argument("a drain needs a reason"));
        }
        let target = target(&req.kind, &req.name)?;
        let author = author(proven, &req.author);
        // A window of up to a year: beyond that, an undrain is the way.
        if req.duration_s > 366 * 86_400 {
            return Err(Status::invalid_argument(format!(
                "duration_s {} is over a year",
                req.duration_s
            )));
        }
        let at_ms = now_ms();
        let request = DrainRequest {
            target: target.clone(),
            reason: req.reason.clone(),
            author: author.clone(),
            at_ms,
            origin: DrainOrigin::Operator,
            force: req.force,
            until_ms: (req.duration_s > 0).then(|| at_ms + req.duration_s * 1_000),
        };
        // A link drains no capacity, but it may cut pairs off: unless forced, a link drain
        // that would leave a routed pair without any path is refused, with the pairs named.
        if let DrainTarget::Link(a, b) = &target
            && !req.force
        {
            let lost = pairs_cut_off(&self.0, a, b).await?;
            if !lost.is_empty() {
                let refusal = format!(
                    "draining {target} would leave {} pair(s) without a path ({}); use --force to drain it anyway",
                    lost.len(),
                    lost.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                );
                if !req.dry_run {
                    self.0.core().log_refusal(&request, refusal.clone());
                }
                return Ok(Response::new(pb::DrainReply {
                    refused: refusal,
                    ..Default::default()
                }));
            }
        }
        let impact = {
            let mut core = self.0.core();
            match core.drain(request, req.dry_run) {
                Ok(i) => i,
                Err(ControllerError::Topology(t @ topology::TopologyError::GuardrailRefused { .. })) => {
                    return Ok(Response::new(pb::DrainReply {
                        refused: t.to_string(),
                        ..Default::default()
                    }));
                }
                Err(e) => return Err(topology_status(e)),
            }
        };
        let capacity_left = if impact.capacity_total == 0 {
            0.0
        } else {
            1.0 - impact.capacity_drained_after as f64 / impact.capacity_total as f64
        };
        let mut version = table_version(&self.0);
        if !req.dry_run {
            info!(target = %target, reason = %req.reason, author = %author, "drained");
            // Make before break: first the paths that avoid the drained sites, and only once
            // the agents hold them (or a few seconds passed), the drained sites turn unready.
            self.0.core().hold_unready(&impact.sites);
            self.0.core().invalidate();
            publish(&self.0).await?;
            let first = version_of(&table_version(&self.0));
            wait_for_agents(&self.0, first, Duration::from_secs(5)).await;
            self.0.core().release_unready();
            publish(&self.0).await?;
            version = table_version(&self.0);
        }
        Ok(Response::new(pb::DrainReply {
            refused: String::new(),
            sites: impact.sites.iter().map(ToString::to_string).collect(),
            version,
            capacity_left,
            overridden: impact.overridden.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn undrain(&self, req: Request<pb::UndrainRequest>) -> Result<Response<pb::UndrainReply>, Status> {
        leader_only(&self.0)?;
        let proven = proven_author(&req);
        let req = req.into_inner();
        let target = target(&req.kind, &req.name)?;
        let author = author(proven, &req.author);
        self.0
            .core()
            .undrain(&target, &author, now_ms())
            .map_err(topology_status)?;
        info!(target = %target, author = %author, "undrained");
        self.0.core().invalidate();
        publish(&self.0).await?;
        Ok(Response::new(pb::UndrainReply {
            version: table_version(&self.0),
        }))
    }

    async fn drains(&self, req: Request<pb::DrainsRequest>) -> Result<Response<pb::DrainsReply>, Status> {
        leader_only(&self.0)?;
        let req = req.into_inner();
        let limit = match req.limit {
            0 => DRAIN_LOG_DEFAULT,
            n => n as usize,
        };
        let core = self.0.core();
        let history = if req.history {
            core.drain_log(limit).map(drain_log_entry).collect()
        } else {
            Vec::new()
        };
        Ok(Response::new(pb::DrainsReply {
            drains: core.world().drains.list().iter().map(drain_entry).collect(),
            history,
        }))
    }

    async fn what_if(&self, req: Request<pb::WhatIfRequest>) -> Result<Response<pb::WhatIfReply>, Status> {
        leader_only(&self.0)?;
        let req = req.into_inner();
        if req.changes.is_empty() {
            return Err(Status::invalid_argument("what-if needs at least one change"));
        }
        let changes = req
            .changes
            .iter()
            .map(|c| crate::core::parse_change(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (world, cfg) = {
            let core = self.0.core();
            (core.world().clone(), core.config().clone())
        };
        // Two full computations: off the I/O threads.
        let reply = tokio::task::spawn_blocking(move || crate::core::what_if_reply(&world, &cfg, &changes))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(topology_status)?;
        Ok(Response::new(reply))
    }

    /// Every replica answers from its own journal (a follower records the leader's tables
    /// as it serves them), so the history stays readable while a leader is being elected.
    async fn changes(&self, req: Request<pb::ChangesRequest>) -> Result<Response<pb::ChangesReply>, Status> {
        let req = req.into_inner();
        let site = match req.site.as_str() {
            "" => None,
            s => {
                let id = site_id(s)?;
                if self.0.core().world().inventory.index_of(&id).is_none() {
                    return Err(Status::not_found(format!("unknown site `{s}`")));
                }
                Some(id)
            }
        };
        let limit = match req.limit {
            0 => DEFAULT_CHANGES,
            n if n > MAX_CHANGES => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is over {MAX_CHANGES}"
                )));
            }
            n => n,
        };
        let page = self.0.journal().query(&JournalQuery {
            site,
            pair: None,
            since_ms: req.since_unix_ms,
            limit: limit as usize,
        });
        Ok(Response::new(pb::ChangesReply {
            changes: page.rows.iter().map(route_change).collect(),
            more: u32::try_from(page.more).unwrap_or(u32::MAX),
            evicted: page.evicted,
            oldest_unix_ms: page.oldest_ms.unwrap_or(0),
        }))
    }
}

/// A journal row on the wire.
fn route_change(r: &JournalRow) -> pb::RouteChange {
    let names =
        |p: &Option<Vec<SiteId>>| -> Vec<String> { p.iter().flatten().map(|s| s.to_string()).collect() };
    pb::RouteChange {
        version: Some(version_pb(r.table)),
        at_unix_ms: r.at_ms,
        src: r.src.to_string(),
        dst: r.dst.to_string(),
        before: names(&r.before),
        after: names(&r.after),
        cost_before_ms: r.cost_before.map(f64::from),
        cost_after_ms: r.cost_after.map(f64::from),
        reason: r.reason.clone(),
    }
}

/// The changes `explain` shows of a pair's history.
/// Drain log entries `axonctl drains --history` gets unless it asks for a number.
const DRAIN_LOG_DEFAULT: usize = 50;

const EXPLAIN_HISTORY: usize = 5;

/// Route changes a `Changes` call returns when it names no limit, and the most it may ask for.
const DEFAULT_CHANGES: u32 = 100;
const MAX_CHANGES: u32 = 10_000;
