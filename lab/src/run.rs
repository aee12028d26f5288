//! Running a scenario: the whole mesh in this process (controller, one prober and one agent
//! per site, the WAN emulator between every pair of probers), the fault timeline, and the
//! measurements the report is made of.

// Pairs are `(a, b)` site indices that address several matrices at once (pipes, applied
// paths, the oracle); index loops say that more plainly than zipped iterators.
#![allow(clippy::needless_range_loop)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agent::AgentHandle;
use controller::{ControllerConfig, ControllerHandle, SiteConfig};
use prober::{PeerConfig, ProberConfig, ProberHandle};
use proto::v1 as pb;
use topology::{CostMatrix, LinkHealth, LinkMetrics, PathConfig, World, compute_routes};
use wan::{DirectionStats, Emulator, EmulatorConfig, LinkParams, Pipe, Way};

use crate::error::LabError;
use crate::report::{BurstReport, Convergence, DirectReport, FaultReport, QualityReport, Report, Spread};
use crate::scenario::{Fault, FaultKind, Scenario, Target};

/// Run options beyond the scenario.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Overrides `run.duration_s`.
    pub duration_s: Option<f64>,
    /// Seed of the emulator's random generators. Default 1.
    pub seed: u64,
    /// Print a status line every few seconds.
    pub live: bool,
    /// Serve every daemon's metrics on loopback and write Prometheus file targets for them
    /// here (`controller.yml`, `prober.yml`, `agent.yml`, probers and agents labelled with
    /// their site), so that `deploy/prometheus/` and the Grafana dashboard can watch the
    /// lab. Default none.
    pub prometheus_targets: Option<std::path::PathBuf>,
}

/// After a fault starts or ends, route changes are the fault's doing for this long.
const TRANSIENT: Duration = Duration::from_secs(10);

fn run_err(e: impl std::fmt::Display) -> LabError {
    LabError::Run(e.to_string())
}

struct Mesh {
    dir: tempfile::TempDir,
    /// The controller replicas (one on the embedded store); `None` while killed.
    controllers: Vec<Option<ControllerHandle>>,
    /// Their configurations, to restart a killed one on its address.
    controller_cfgs: Vec<ControllerConfig>,
    /// The etcd the replicas share, when there are several.
    _etcd: Option<controller::ha::LocalEtcd>,
    probers: Vec<ProberHandle>,
    agents: Vec<AgentHandle>,
    /// `pipes[&(a, b)]`: the link `a` probes `b` over; base parameters beside it.
    pipes: HashMap<(usize, usize), (Pipe, LinkParams, LinkParams)>,
    emulator: Emulator,
}

async fn start(s: &Scenario, seed: u64, metrics: bool) -> Result<Mesh, LabError> {
    let dir = tempfile::tempdir().map_err(run_err)?;
    let inv = &s.world.inventory;
    let ids: Vec<String> = inv.sites().iter().map(|x| x.id.to_string()).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    prober::tls::generate_mesh(dir.path(), &refs).map_err(run_err)?;
    let any =
        |ip: &str| -> Result<std::net::SocketAddr, LabError> { format!("{ip}:0").parse().map_err(run_err) };

    let mut cc = ControllerConfig {
        grpc_listen: any("127.0.0.1")?,
        http_listen: any("127.0.0.1")?,
        sites: inv
            .sites()
            .iter()
            .map(|x| SiteConfig {
                id: x.id.to_string(),
                region: x.region.to_string(),
                provider: x.provider.clone(),
                lat: x.lat,
                lon: x.lon,
                capacity: x.capacity,
                role: x.role,
            })
            .collect(),
        ..Default::default()
    };
    cc.engine.paths.max_relays = s.run.max_relays;
    cc.guardrails.min_active_regions = 1;
    // The whole control plane on mutual TLS, as in production: the controller's certificate,
    // each site's for its prober and agent, an operator's for the drains.
    cc.tls = Some(prober::tls::mesh_files(dir.path(), "controller"));
    // Several controllers share an etcd of their own: one leads, the others follow.
    let etcd = if s.run.controllers > 1 {
        let e = controller::ha::LocalEtcd::start(dir.path())
            .await
            .map_err(run_err)?;
        cc.store.kind = "etcd".into();
        cc.store.etcd_endpoints = vec![e.url.clone()];
        Some(e)
    } else {
        None
    };
    let mut controllers = Vec::new();
    let mut controller_cfgs = Vec::new();
    for i in 0..s.run.controllers {
        let mut c = cc.clone();
        c.name = format!("controller-{i}");
        let handle = controller::start(c.clone()).await.map_err(run_err)?;
        // A restart must come back on the same address, the one probers and agents list.
        c.grpc_listen = handle.grpc_addr;
        c.http_listen = handle.http_addr;
        controllers.push(Some(handle));
        controller_cfgs.push(c);
    }
    let urls: Vec<String> = controller_cfgs
        .iter()
        .map(|c| format!("https://{}", c.grpc_listen))
        .collect();

    // A sender that sleeps (waking early by its learnt lateness) rather than spinning: a
    // 25-site mesh sends ~18,000 packets a second through it, a spinning sender then never
    // idles, and the core it takes is one of the two the whole mesh runs on (global-25: a
    // third less CPU for the lab, round trips and jitter read no worse).
    let emulator = Emulator::new(EmulatorConfig {
        seed,
        spin: Duration::ZERO,
    })
    .map_err(run_err)?;
    let n = inv.len();
    // Each prober on its own loopback address (127.0.1.x, one port for all): the emulator's
    // sockets live on 127.0.0.1, so a port released here cannot be taken by a pipe before the
    // prober binds it.
    let port = std::net::UdpSocket::bind("127.0.1.1:0")
        .and_then(|u| u.local_addr())
        .map_err(run_err)?
        .port();
    let addrs: Vec<std::net::SocketAddr> = (0..n)
        .map(|i| std::net::SocketAddr::from(([127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8], port)))
        .collect();
    let noise = s.run.noise;
    let mut pipes = HashMap::new();
    for a in 0..n {
        for b in 0..n {
            if a == b {
                continue;
            }
            let (fwd, back) = match s.world.links.get(a as u16, b as u16) {
                Some(v) => {
                    let half = Duration::from_secs_f64(v.metrics.rtt_ms / 2e3);
                    let jitter = Duration::from_secs_f64((v.metrics.jitter_ms + noise.jitter_ms) / 1e3);
                    let fwd = LinkParams {
                        delay: half,
                        jitter,
                        keep_order: true,
                        loss: (v.metrics.loss + noise.loss_pct / 100.0).min(1.0),
                        ..Default::default()
                    };
                    let back = LinkParams {
                        delay: half,
                        loss: noise.loss_pct / 100.0,
                        keep_order: true,
                        ..Default::default()
                    };
                    (fwd, back)
                }
                // No measured link: unreachable.
                None => (
                    LinkParams {
                        blackhole: true,
                        ..Default::default()
                    },
                    LinkParams {
                        blackhole: true,
                        ..Default::default()
                    },
                ),
            };
            // Traffic from the lower site to the higher carries the link's jitter and loss, and
            // the other way only the noise's loss, in both pipes of the pair: the pair's one
            // connection runs through either pipe (the lower site dials first, but the higher
            // one dials too when the first connection is slow or lost), and the link must be
            // the same whichever it is.
            let (fwd, back) = if a < b { (fwd, back) } else { (back, fwd) };
            let pipe = emulator
                .pipe(addrs[b], fwd.clone(), back.clone())
                .map_err(run_err)?;
            pipes.insert((a, b), (pipe, fwd, back));
        }
    }
    let mut probers = Vec::with_capacity(n);
    let mut agents = Vec::with_capacity(n);
    for a in 0..n {
        let cfg = ProberConfig {
            site: ids[a].clone(),
            listen: addrs[a],
            metrics_listen: metrics.then(|| any("127.0.0.1")).transpose()?,
            probe_interval_ms: (1_000.0 / s.run.probe_hz).round() as u64,
            window_ms: (s.run.window_s * 1_000.0).round() as u64,
            tls: prober::tls::mesh_files(dir.path(), &ids[a]),
            peers: (0..n)
                .filter(|&b| b != a)
                .map(|b| PeerConfig {
                    site: ids[b].clone(),
                    addr: pipes[&(a, b)].0.front_addr(),
                })
                .collect(),
            report: prober::ReportConfig {
                endpoints: urls.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        probers.push(prober::start(cfg).await.map_err(run_err)?);
        let acfg = agent::AgentConfig {
            node: format!("{}-1", ids[a]),
            site: ids[a].clone(),
            // Agents start from different replicas, so followers serve some of them.
            controllers: {
                let mut order = urls.clone();
                order.rotate_left(a % urls.len());
                order
            },
            table_file: dir.path().join(format!("agent-{}.pb", ids[a])),
            http_listen: any("127.0.0.1")?,
            metrics_listen: metrics.then(|| any("127.0.0.1")).transpose()?,
            tls: Some(prober::tls::mesh_files(dir.path(), &ids[a])),
            ..Default::default()
        };
        agents.push(agent::start(acfg).await.map_err(run_err)?);
    }
    Ok(Mesh {
        dir,
        controllers,
        controller_cfgs,
        _etcd: etcd,
        probers,
        agents,
        pipes,
        emulator,
    })
}

impl Mesh {
    /// Writes Prometheus file targets for every daemon (see [`Options::prometheus_targets`]).
    /// A killed controller comes back on the same address, so the files stay right.
    fn write_targets(&self, s: &Scenario, dir: &std::path::Path) -> Result<(), LabError> {
        let sites = s.world.inventory.sites();
        let group = |addr: std::net::SocketAddr, site: Option<&str>| match site {
            Some(site) => format!("- targets: [\"{addr}\"]\n  labels: {{site: \"{site}\"}}\n"),
            None => format!("- targets: [\"{addr}\"]\n"),
        };
        let header = format!("# Written by axon-lab for scenario {}.\n", s.name);
        let controllers: String = self
            .controller_cfgs
            .iter()
            .map(|c| group(c.http_listen, None))
            .collect();
        let mut probers = String::new();
        let mut agents = String::new();
        for (i, site) in sites.iter().enumerate() {
            let id = Some(site.id.as_str());
            if let Some(a) = self.probers[i].metrics_addr {
                probers += &group(a, id);
            }
            if let Some(a) = self.agents[i].metrics_addr {
                agents += &group(a, id);
            }
        }
        std::fs::create_dir_all(dir).map_err(run_err)?;
        for (file, body) in [
            ("controller.yml", controllers),
            ("prober.yml", probers),
            ("agent.yml", agents),
        ] {
            let path = dir.join(file);
            ops::write_atomically(&path, format!("{header}{body}").as_bytes())
                .map_err(|e| run_err(format!("writing {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// The replica that leads now, if one does (the only one on the embedded store).
    fn leader(&self) -> Option<&ControllerHandle> {
        self.controllers
            .iter()
            .flatten()
            .find(|c| c.shared.leadership.borrow().is_leader())
    }

    /// The leader's epoch, if a replica leads.
    fn epoch(&self) -> Option<u64> {
        self.leader()?
            .shared
            .leadership
            .borrow()
            .fence
            .as_ref()
            .map(controller::ha::Fence::epoch)
    }

    /// An admin client on the leader, with the operator's certificate.
    async fn admin(
        &self,
    ) -> Result<proto::v1::admin_client::AdminClient<tonic::transport::Channel>, LabError> {
        let leader = self
            .leader()
            .ok_or_else(|| LabError::Run("no controller leads: cannot drain".into()))?;
        let operator = prober::tls::mesh_files(self.dir.path(), "operator");
        let channel = proto::auth::endpoint(&format!("https://{}", leader.grpc_addr), Some(&operator))
            .map_err(run_err)?
            .connect()
            .await
            .map_err(run_err)?;
        Ok(proto::v1::admin_client::AdminClient::new(channel))
    }
}

/// The worst link in the controller's view, for the live view: a down link first, else the
/// lossiest (if it loses anything), by name.
fn worst_link(core: &controller::core::Core, s: &Scenario) -> Option<String> {
    let inv = &s.world.inventory;
    let n = inv.len() as u16;
    let mut worst: Option<(bool, f64, u16, u16)> = None;
    for a in 0..n {
        for b in 0..n {
            let Some(v) = core.world().links.get(a, b) else {
                continue;
            };
            let key = (v.health == LinkHealth::Down, v.metrics.loss);
            if (key.0 || key.1 > 0.0) && worst.is_none_or(|w| (w.0, w.1) < key) {
                worst = Some((key.0, key.1, a, b));
            }
        }
    }
    worst.map(|(down, loss, a, b)| {
        let (x, y) = (inv.site(a).id.as_str(), inv.site(b).id.as_str());
        if down {
            format!("{x}→{y} down")
        } else {
            format!("{x}→{y} {:.1}% loss", loss * 100.0)
        }
    })
}

/// Starts a killed replica again on its address (the old sockets may take a moment to go).
async fn restart(cfg: ControllerConfig) -> Result<ControllerHandle, LabError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match controller::start(cfg.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "controller restart: retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(run_err(e)),
        }
    }
}

/// The scenario as the mesh measures it. Two sites share one probing connection and both
/// measure the same round trip over its two ways, so the matrix's two directions of a pair
/// become one link: the mean of their round trips, losses and jitters, in both directions.
fn paired(s: &Scenario) -> Scenario {
    let mut s = s.clone();
    let n = s.world.inventory.len() as u16;
    let table = std::sync::Arc::make_mut(&mut s.world.links);
    for a in 0..n {
        for b in a + 1..n {
            let (Some(ab), Some(ba)) = (table.get(a, b).copied(), table.get(b, a).copied()) else {
                continue;
            };
            let mut v = ab;
            v.metrics.rtt_ms = (ab.metrics.rtt_ms + ba.metrics.rtt_ms) / 2.0;
            v.metrics.loss = (ab.metrics.loss + ba.metrics.loss) / 2.0;
            v.metrics.jitter_ms = (ab.metrics.jitter_ms + ba.metrics.jitter_ms) / 2.0;
            table.set(a, b, Some(v));
            table.set(b, a, Some(v));
        }
    }
    s
}

/// The links (directed, by index) and sites a fault hits. A link fault hits both directions
/// of its pair, whichever it names: their measurements cross the same two ways.
type Hits = (Vec<(usize, usize)>, Vec<usize>);

/// What `f` hits, by index.
fn hits(s: &Scenario, f: &Fault) -> Hits {
    let inv = &s.world.inventory;
    let idx = |id: &topology::SiteId| usize::from(inv.index_of(id).unwrap_or_default());
    match &f.target {
        Target::Links(l) => {
            let mut links: Vec<(usize, usize)> = l
                .iter()
                .flat_map(|(a, b)| [(idx(a), idx(b)), (idx(b), idx(a))])
                .collect();
            links.sort_unstable();
            links.dedup();
            (links, Vec::new())
        }
        Target::Site(x) => (Vec::new(), vec![idx(x)]),
        Target::Region(r) => (
            Vec::new(),
            inv.sites()
                .iter()
                .enumerate()
                .filter(|(_, x)| &x.region == r)
                .map(|(i, _)| i)
                .collect(),
        ),
        Target::None => (Vec::new(), Vec::new()),
    }
}

/// The true world with the active faults applied: what the oracle routes on.
fn true_world(s: &Scenario, active: &[&Fault]) -> World {
    let mut w = s.world.clone();
    let n = w.inventory.len();
    let table = std::sync::Arc::make_mut(&mut w.links);
    for f in active {
        let (links, sites) = hits(s, f);
        for (a, b) in links {
            let (a16, b16) = (a as u16, b as u16);
            let Some(mut v) = table.get(a16, b16).copied() else {
                continue;
            };
            match f.spec.kind {
                FaultKind::Blackhole => {
                    table.set(a16, b16, None);
                    continue;
                }
                FaultKind::Loss => v.metrics.loss = (v.metrics.loss + f.spec.value).min(1.0),
                FaultKind::Delay => v.metrics.rtt_ms += f.spec.value,
                FaultKind::Jitter => v.metrics.jitter_ms += f.spec.value,
                _ => {}
            }
            table.set(a16, b16, Some(v));
        }
        if f.spec.kind == FaultKind::SiteDown {
            for &x in &sites {
                for y in 0..n {
                    table.set(x as u16, y as u16, None);
                    table.set(y as u16, x as u16, None);
                }
            }
        }
    }
    for f in active {
        if let (FaultKind::DrainRegion, Target::Region(r)) = (f.spec.kind, &f.target) {
            let req = topology::DrainRequest {
                target: topology::DrainTarget::Region(r.clone()),
                reason: "lab".into(),
                author: "lab".into(),
                at_ms: 0,
                origin: topology::DrainOrigin::Operator,
                force: true,
                until_ms: None,
            };
            let healthy = vec![true; n];
            let _ = w
                .drains
                .drain(&w.inventory, &healthy, &topology::GuardrailConfig::default(), req);
        }
    }
    add_noise(&mut w, s.run.noise);
    w
}

/// What RFC 3550 jitter reads on a link whose one-way delay varies uniformly in `±amplitude`:
/// the estimator follows the mean |difference| of consecutive round trips, and two draws
/// from `U(−A, A)` differ by `2A/3` on average. A scenario's jitter values are the emulator's
/// amplitudes; the truth the controller is judged against is what an ideal prober reads.
pub(crate) fn rfc3550_of_uniform(amplitude_ms: f64) -> f64 {
    amplitude_ms * 2.0 / 3.0
}

/// Whether a jitter fault of amplitude `fault_ms` is seen in the controller's `measured_ms`
/// on a link whose amplitude was `before_ms` (the link's and the noise's): jitter is judged as
/// RFC 3550 reads it, like the truth, once it has risen by a quarter of what the fault adds
/// (the estimator follows a step slowly, with gain 1/16).
fn jitter_fault_seen(measured_ms: f64, before_ms: f64, fault_ms: f64) -> bool {
    measured_ms >= rfc3550_of_uniform(before_ms) + rfc3550_of_uniform(fault_ms) / 4.0
}

/// The noise as the emulator applies it, so that the truth is what an ideal prober would
/// measure: each probe crosses the forward pipe (the link's loss, the noise and any fault) and
/// its reply the backward one (the noise), so a round trip is lost with probability
/// `1 − (1 − l − n)(1 − n)`; the forward pipe's jitter amplitude grows by the noise's, and
/// the link's jitter is what RFC 3550 reads of that amplitude.
fn add_noise(w: &mut World, noise: crate::scenario::Noise) {
    let n = w.inventory.len();
    let p = noise.loss_pct / 100.0;
    let table = std::sync::Arc::make_mut(&mut w.links);
    for a in 0..n as u16 {
        for b in 0..n as u16 {
            if let Some(mut v) = table.get(a, b).copied() {
                let fwd = (v.metrics.loss + p).min(1.0);
                v.metrics.loss = 1.0 - (1.0 - fwd) * (1.0 - p);
                v.metrics.jitter_ms = rfc3550_of_uniform(v.metrics.jitter_ms + noise.jitter_ms);
                table.set(a, b, Some(v));
            }
        }
    }
}

/// The counters of the pipes of `links`, both ways of each.
fn pipe_stats<'a>(mesh: &'a Mesh, links: &'a [(usize, usize)]) -> impl Iterator<Item = &'a DirectionStats> {
    links
        .iter()
        .filter_map(|k| mesh.pipes.get(k))
        .flat_map(|(p, _, _)| [Way::Forward, Way::Backward].map(|w| p.stats(w)))
}

/// The emulator's counters on the pair's pipes, each way, for the debug output:
/// `lost/in/q<queue drops>/out<sent on>`.
fn pipe_counters(mesh: &Mesh, a: usize, b: usize) -> String {
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    pipe_stats(mesh, &[(a, b), (b, a)])
        .map(|st| {
            format!(
                "{}/{}/q{}/out{}",
                get(&st.lost),
                get(&st.received),
                get(&st.queue_dropped),
                get(&st.sent)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prober `a`'s bursts toward peer `b` (started, heal), from its metrics, for the debug output.
fn peer_bursts(mesh: &Mesh, s: &Scenario, a: usize, b: usize) -> (u64, u64) {
    let peer = s.world.inventory.sites()[b].id.as_str();
    let mut r = (0, 0);
    for mf in mesh.probers[a].metrics.registry.gather() {
        for m in mf.get_metric() {
            if !m
                .get_label()
                .iter()
                .any(|l| l.name() == "peer" && l.value() == peer)
            {
                continue;
            }
            let v = m.get_counter().get_value() as u64;
            match mf.name() {
                "axon_probe_bursts_total" => r.0 += v,
                "axon_probe_heal_bursts_total" => r.1 += v,
                _ => {}
            }
        }
    }
    r
}

/// A counter summed over every prober and label.
/// Adds the probe reports a controller refused to `into`, by reason (reasons with none left
/// out).
fn reports_refused(c: &ControllerHandle, into: &mut std::collections::BTreeMap<String, u64>) {
    let m = &c.shared.metrics.rejected;
    for r in controller::core::REJECT_REASONS {
        let n = m.with_label_values(&[r]).get();
        if n > 0 {
            *into.entry((*r).to_string()).or_default() += n;
        }
    }
}

fn counter_sum(mesh: &Mesh, name: &str) -> u64 {
    mesh.probers
        .iter()
        .flat_map(|p| p.metrics.registry.gather())
        .filter(|mf| mf.name() == name)
        .map(|mf| {
            mf.get_metric()
                .iter()
                .map(|m| m.get_counter().get_value() as u64)
                .sum::<u64>()
        })
        .sum()
}

/// Every prober's evidence bursts, started and held back, from their metrics.
fn burst_counts(mesh: &Mesh) -> BurstReport {
    let mut r = BurstReport::default();
    for p in &mesh.probers {
        for mf in p.metrics.registry.gather() {
            for m in mf.get_metric() {
                let v = m.get_counter().get_value() as u64;
                let reason = m
                    .get_label()
                    .iter()
                    .find(|l| l.name() == "reason")
                    .map(|l| l.value());
                match (mf.name(), reason) {
                    ("axon_probe_bursts_total", _) => r.started += v,
                    ("axon_probe_heal_bursts_total", _) => r.heal += v,
                    ("axon_probe_asked_bursts_total", _) => r.asked += v,
                    ("axon_probe_deferred_bursts_total", _) => r.deferred += v,
                    ("axon_probe_bursts_refused_total", Some("asked_limit")) => r.refused_asked_limit += v,
                    ("axon_probe_bursts_refused_total", Some("slots")) => r.refused_slots += v,
                    ("axon_probe_bursts_refused_total", Some("host_stall")) => r.refused_host_stall += v,
                    ("axon_probe_bursts_refused_total", Some("lossy")) => r.refused_lossy += v,
                    _ => {}
                }
            }
        }
    }
    r
}

/// Packets the emulator dropped to random loss on the pipes of `links`, both ways.
fn dropped(mesh: &Mesh, links: &[(usize, usize)]) -> u64 {
    pipe_stats(mesh, links)
        .map(|st| st.lost.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

/// Probes the probers at the links' sources have counted lost to their far ends: a dropped
/// datagram that carried a probe (or its echo), found past its loss timeout.
fn probes_lost(mesh: &Mesh, world: &World, links: &[(usize, usize)]) -> u64 {
    let sites = world.inventory.sites();
    links
        .iter()
        .map(|&(a, b)| {
            let peer = [sites[b].id.as_str()];
            mesh.probers[a].metrics.lost.with_label_values(&peer).get()
        })
        .sum()
}

/// Sets a pipe's parameters for the faults active on it.
fn apply_pipe(mesh: &Mesh, s: &Scenario, active: &[&Fault]) -> Result<(), LabError> {
    for (&(a, b), (pipe, fwd0, back0)) in &mesh.pipes {
        let (mut fwd, mut back) = (fwd0.clone(), back0.clone());
        for f in active {
            let (links, sites) = hits(s, f);
            let on_link = links.contains(&(a, b));
            let on_site = f.spec.kind == FaultKind::SiteDown && (sites.contains(&a) || sites.contains(&b));
            match f.spec.kind {
                FaultKind::Blackhole if on_link => {
                    fwd.blackhole = true;
                    back.blackhole = true;
                }
                FaultKind::SiteDown if on_site => {
                    fwd.blackhole = true;
                    back.blackhole = true;
                }
                // Loss and jitter go on the lower-to-higher way of both pipes (see `start`).
                FaultKind::Loss if on_link && a < b => fwd.loss = (fwd.loss + f.spec.value).min(1.0),
                FaultKind::Loss if on_link => back.loss = (back.loss + f.spec.value).min(1.0),
                FaultKind::Delay if on_link => {
                    let half = Duration::from_secs_f64(f.spec.value / 2e3);
                    fwd.delay += half;
                    back.delay += half;
                }
                FaultKind::Jitter if on_link && a < b => {
                    fwd.jitter += Duration::from_secs_f64(f.spec.value / 1e3)
                }
                FaultKind::Jitter if on_link => back.jitter += Duration::from_secs_f64(f.spec.value / 1e3),
                _ => {}
            }
        }
        if pipe.params(Way::Forward) != fwd {
            pipe.set(Way::Forward, fwd).map_err(run_err)?;
        }
        if pipe.params(Way::Backward) != back {
            pipe.set(Way::Backward, back).map_err(run_err)?;
        }
    }
    Ok(())
}

/// The primary path every agent applies: `paths[src][dst]` as site indices.
fn applied(mesh: &Mesh, s: &Scenario) -> Vec<Vec<Option<Vec<usize>>>> {
    let inv = &s.world.inventory;
    let n = inv.len();
    let idx = |x: &str| {
        topology::SiteId::new(x)
            .ok()
            .and_then(|id| inv.index_of(&id))
            .map(usize::from)
    };
    let mut out = vec![vec![None; n]; n];
    for (a, ag) in mesh.agents.iter().enumerate() {
        let Some(t) = ag.state.table() else { continue };
        for row in &t.update.rows {
            let (Some(b), Some(p)) = (idx(&row.dst), &row.primary) else {
                continue;
            };
            out[a][b] = p.sites.iter().map(|x| idx(x)).collect();
        }
    }
    out
}

fn uses(path: &[usize], links: &[(usize, usize)], sites: &[usize], relays_only: bool) -> bool {
    path.windows(2).any(|w| links.contains(&(w[0], w[1])))
        || if relays_only {
            path.len() > 2 && path[1..path.len() - 1].iter().any(|x| sites.contains(x))
        } else {
            path.iter().any(|x| sites.contains(x))
        }
}

/// The true cost of a path (`None` when a link is unusable).
fn path_cost(cm: &CostMatrix, path: &[usize], relay_penalty: f64) -> Option<f64> {
    let mut c = relay_penalty * path.len().saturating_sub(2) as f64;
    for w in path.windows(2) {
        let l = cm.cost(w[0], w[1]);
        if !l.is_finite() {
            return None;
        }
        c += f64::from(l);
    }
    Some(c)
}

/// An ordered pair of sites, by index.
type Pair = (usize, usize);

/// The paths a fault's affected pairs held when it began, for the flap count: a pair going
/// back to that path, having left it while the fault was on or within [`TRANSIENT`] of its
/// end, is the fault's recovery however late — a verdict that came as the fault ended moves
/// the pair once away and once back, and neither move is noise.
struct Held {
    /// Per fault: each affected pair's path at the fault's start, and whether it has left it.
    paths: Vec<HashMap<Pair, (Vec<usize>, bool)>>,
    /// When each fault ended.
    ended: Vec<Option<Duration>>,
}

impl Held {
    fn new(faults: usize) -> Self {
        Held {
            paths: vec![HashMap::new(); faults],
            ended: vec![None; faults],
        }
    }

    /// Fault `i` began with `pair` on `path`.
    fn began(&mut self, i: usize, pair: Pair, path: &[usize]) {
        self.paths[i].insert(pair, (path.to_vec(), false));
    }

    /// Fault `i` ended at `t`.
    fn ended(&mut self, i: usize, t: Duration) {
        self.ended[i] = Some(t);
    }

    /// `pair` moved to `now` at `t`: whether that is its return to the path it held when a
    /// fault began, which it left during the fault or just after. `restored`: the controller
    /// made the move as the end of a detour (`Restored`: back to the path the fault took the
    /// pair from, or to one costing no more), which is that return too when the path differs.
    fn changed(&mut self, pair: Pair, now: Option<&[usize]>, t: Duration, restored: bool) -> bool {
        let mut returning = false;
        for (paths, ended) in self.paths.iter_mut().zip(&self.ended) {
            let Some((before, left)) = paths.get_mut(&pair) else {
                continue;
            };
            if now == Some(before.as_slice()) || (restored && *left) {
                returning |= *left;
                *left = false;
            } else if ended.is_none_or(|e| t.saturating_sub(e) <= TRANSIENT) {
                *left = true;
            }
        }
        returning
    }
}

/// The true round trip of a path, ms (`None` when a link of it is unusable: its round trip
/// in the matrix is infinite).
fn path_rtt(cm: &CostMatrix, path: &[usize]) -> Option<f64> {
    if !(2..=4).contains(&path.len()) {
        return None;
    }
    let sites: Vec<topology::SiteIdx> = path.iter().map(|&x| x as topology::SiteIdx).collect();
    cm.path_rtt(&topology::Path::new(&sites)).map(f64::from)
}

/// The quality samples against the direct path (see [`DirectReport`]).
#[derive(Debug, Default)]
struct DirectSamples {
    samples: usize,
    relayed: usize,
    cost_ratio: f64,
    rtt: f64,
    direct_rtt: f64,
    saved: Vec<f64>,
}

impl DirectSamples {
    /// Pair `a → b` on `applied`, where the oracle's best costs `best` on the true matrix
    /// `cm`; pairs without a usable direct link or applied path are not counted.
    fn sample(&mut self, cm: &CostMatrix, (a, b): Pair, applied: &[usize], best: f32) {
        let cost = f64::from(cm.cost(a, b));
        let (Some(rtt), Some(direct_rtt)) = (path_rtt(cm, applied), path_rtt(cm, &[a, b])) else {
            return;
        };
        self.samples += 1;
        self.cost_ratio += cost / f64::from(best).max(1e-6);
        self.rtt += rtt;
        self.direct_rtt += direct_rtt;
        if applied.len() > 2 {
            self.relayed += 1;
            self.saved.push(direct_rtt - rtt);
        }
    }

    fn report(self) -> DirectReport {
        let k = self.samples.max(1) as f64;
        DirectReport {
            pairs_relayed: self.relayed as f64 / k,
            mean_direct_cost_ratio_vs_oracle: self.cost_ratio / k,
            mean_rtt_ms: self.rtt / k,
            mean_direct_rtt_ms: self.direct_rtt / k,
            relayed_rtt_saved_ms: Spread::of(self.saved),
        }
    }
}

fn meets_voice(world: &World, path: &[usize]) -> bool {
    let metrics: Vec<LinkMetrics> = path
        .windows(2)
        .filter_map(|w| world.links.get(w[0] as u16, w[1] as u16).map(|v| v.metrics))
        .collect();
    if metrics.len() + 1 != path.len() {
        return false;
    }
    let q = topology::Quality::of_path(metrics.iter());
    q.rtt_ms <= 320.0 && q.loss <= 0.012 && q.jitter_ms <= 12.0
}

/// The controller's table entry for pair `a → b`, if it has one, for the explanations on
/// stderr.
fn entry_of(
    core: &controller::core::Core,
    world: &World,
    a: usize,
    b: usize,
) -> Option<topology::RouteEntry> {
    let inv = &world.inventory;
    core.table()?
        .entry(&inv.site(a as u16).id, &inv.site(b as u16).id)
        .ok()
        .flatten()
}

/// Whether the controller's table has pair `a → b` on `path` by a `Restored` switch: the end
/// of a detour a fault put it on.
fn restored_to(core: &controller::core::Core, world: &World, a: usize, b: usize, path: &[usize]) -> bool {
    let inv = &world.inventory;
    entry_of(core, world, a, b).is_some_and(|e| {
        matches!(
            e.reason,
            topology::Reason::Switched(topology::SwitchReason::Restored { .. })
        ) && e
            .primary
            .iter()
            .map(|id| inv.index_of(id).map(usize::from))
            .eq(path.iter().map(|&x| Some(x)))
    })
}

/// The controller's reason for pair `a → b` in its table (empty when it has none).
fn reason_of(core: &controller::core::Core, world: &World, a: usize, b: usize) -> String {
    entry_of(core, world, a, b).map_or_else(String::new, |e| controller::core::reason_text(&e.reason))
}

/// The controller's view (health, metrics) of each link, one line each, on stderr.
fn print_links(core: &controller::core::Core, links: impl Iterator<Item = (usize, usize)>) {
    for (x, y) in links {
        let v = core.world().links.get(x as u16, y as u16);
        eprintln!("    {x}->{y} {:?}", v.map(|v| (v.health, v.metrics)));
    }
}

/// The controller's smoothed link metrics against the true ones, one sample per link and
/// reading: the accuracy of what the routes are computed on. Read outside transients only, where
/// the smoothing has had time to follow a fault.
#[derive(Default)]
struct MeasurementErrors {
    /// |measured − true| round trip, ms.
    rtt: Vec<f64>,
    /// |measured − true| loss, percentage points.
    loss: Vec<f64>,
    /// |measured − true| jitter, ms.
    jitter: Vec<f64>,
}

impl MeasurementErrors {
    /// One reading of every link both worlds hold and the controller does not hold down;
    /// `print` writes each link's RTT error to stderr.
    fn sample(&mut self, measured: &World, truth: &World, n: usize, print: bool) {
        for a in 0..n as u16 {
            for b in 0..n as u16 {
                let (Some(m), Some(t)) = (measured.links.get(a, b), truth.links.get(a, b)) else {
                    continue;
                };
                if m.health == LinkHealth::Down {
                    continue;
                }
                self.rtt.push((m.metrics.rtt_ms - t.metrics.rtt_ms).abs());
                if print {
                    eprintln!(
                        "  rtt {a}->{b}: measured {:.3} true {:.3} error {:+.3} ms",
                        m.metrics.rtt_ms,
                        t.metrics.rtt_ms,
                        m.metrics.rtt_ms - t.metrics.rtt_ms
                    );
                }
                self.loss.push((m.metrics.loss - t.metrics.loss).abs() * 100.0);
                self.jitter
                    .push((m.metrics.jitter_ms - t.metrics.jitter_ms).abs());
            }
        }
    }
}

/// The faults in force: started and not yet ended.
fn active_faults<'a>(s: &'a Scenario, started: &[bool], ended: &[bool]) -> Vec<&'a Fault> {
    s.faults
        .iter()
        .enumerate()
        .filter(|(i, _)| started[*i] && !ended[*i])
        .map(|(_, f)| f)
        .collect()
}

/// Runs the scenario to the end and reports.
pub async fn run(s: &Scenario, opts: &Options) -> Result<Report, LabError> {
    let s = &paired(s);
    let duration = Duration::from_secs_f64(opts.duration_s.unwrap_or(s.run.duration_s));
    let cpu0 = ops::cpu_seconds(None).unwrap_or(0.0);
    let host0 = ops::HostCpu::now();
    let mesh = start(s, opts.seed.max(1), opts.prometheus_targets.is_some()).await?;
    if let Some(dir) = &opts.prometheus_targets {
        mesh.write_targets(s, dir)?;
    }
    if opts.live {
        // The control plane is a real one: an operator may question it while the run lasts.
        let op = prober::tls::mesh_files(mesh.dir.path(), "operator");
        // A follower names the leader when asked, should the lead move during the run.
        let first = mesh.leader().or_else(|| mesh.controllers.iter().flatten().next());
        println!(
            "axonctl while it runs: AXON_CONTROLLER=https://{} AXON_CA={} AXON_CERT={} AXON_KEY={} axonctl changes",
            first.map_or_else(String::new, |c| c.grpc_addr.to_string()),
            op.ca.display(),
            op.cert.display(),
            op.key.display()
        );
    }
    let n = s.world.inventory.len();
    let cfg = ControllerConfig::default();
    let weights = cfg.engine.cost.clone();
    let paths_cfg = PathConfig {
        max_relays: s.run.max_relays,
        threads: 1,
    };
    let oracle_of = |w: &World| {
        let cm = CostMatrix::build(w, &weights, &cfg.engine.prices);
        let r = compute_routes(&cm, &paths_cfg, None);
        (cm, r)
    };
    let mut mesh = mesh;
    // Wait for a first leader and its first table (a replicated start campaigns and warms up).
    let ready_by = Instant::now() + Duration::from_secs(30);
    while mesh
        .leader()
        .is_none_or(|c| c.shared.published.borrow().is_none())
    {
        if Instant::now() > ready_by {
            return Err(LabError::Run(
                "no controller published a table within 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A killed replica: its index, when, and the epoch it led under.
    let mut killed: Vec<Option<(usize, u64)>> = vec![None; s.faults.len()];
    // Reports refused by replicas the run killed (their counters go with them).
    let mut refused = std::collections::BTreeMap::new();

    let t0 = Instant::now();
    let mut reports: Vec<FaultReport> = s
        .faults
        .iter()
        .map(|f| FaultReport {
            at_s: f.spec.at_s,
            kind: f.spec.kind.as_str().to_string(),
            target: f.spec.target.clone(),
            value: f.spec.value,
            detect_s: None,
            converge_s: None,
            affected_pairs: 0,
            recover_s: None,
            recover_held_by: None,
            first_drop_s: None,
            first_probe_lost_s: None,
        })
        .collect();
    // Per fault: the emulator's drops on its links when it started (loss faults), and the
    // probes its links' ends had counted lost.
    let mut drops_at_start: Vec<Option<u64>> = vec![None; s.faults.len()];
    let mut probes_lost_at_start: Vec<Option<u64>> = vec![None; s.faults.len()];
    // Per fault: started, ended, affected pairs.
    // What each fault hits, resolved once: the sampling loop asks ten times a second.
    let hit: Vec<Hits> = s.faults.iter().map(|f| hits(s, f)).collect();
    let mut started = vec![false; s.faults.len()];
    let mut ended = vec![false; s.faults.len()];
    let mut affected: Vec<Vec<(usize, usize)>> = vec![Vec::new(); s.faults.len()];
    let mut last_event = Duration::ZERO;
    let mut prev = applied(&mesh, s);
    let (mut changes, mut flaps) = (0usize, 0usize);
    let (mut ratios, mut within) = (Vec::new(), 0usize);
    let mut direct = DirectSamples::default();
    let mut held = Held::new(s.faults.len());
    let mut next_quality = TRANSIENT;
    let mut next_live = Duration::ZERO;
    let mut live = crate::live::Live::new();
    let mut truth = true_world(s, &[]);
    let mut oracle = oracle_of(&truth);
    // The controller's view against the truth, sampled with the route quality.
    let mut errors = MeasurementErrors::default();

    while t0.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = t0.elapsed();
        let ts = t.as_secs_f64();
        // Fault starts and ends.
        let mut changed = false;
        for (i, f) in s.faults.iter().enumerate() {
            let end = f.spec.duration_s.map(|d| f.spec.at_s + d);
            if !started[i] && ts >= f.spec.at_s {
                started[i] = true;
                changed = true;
                let (links, sites) = &hit[i];
                let relays_only = f.spec.kind == FaultKind::DrainRegion || f.spec.kind == FaultKind::SiteDown;
                for a in 0..n {
                    for b in 0..n {
                        if let Some(p) = &prev[a][b]
                            && uses(p, links, sites, relays_only)
                            && !(relays_only && (sites.contains(&a) || sites.contains(&b)))
                        {
                            affected[i].push((a, b));
                            held.began(i, (a, b), p);
                        }
                    }
                }
                reports[i].affected_pairs = affected[i].len();
                if f.spec.kind == FaultKind::Loss {
                    drops_at_start[i] = Some(dropped(&mesh, links));
                    probes_lost_at_start[i] = Some(probes_lost(&mesh, &s.world, links));
                }
                if f.spec.kind == FaultKind::ControllerKill {
                    let epoch = mesh.epoch().unwrap_or(0);
                    if let Some(r) = mesh.controllers.iter().position(|c| {
                        c.as_ref()
                            .is_some_and(|c| c.shared.leadership.borrow().is_leader())
                    }) && let Some(c) = mesh.controllers[r].take()
                    {
                        reports_refused(&c, &mut refused);
                        c.kill().await;
                        killed[i] = Some((r, epoch));
                    }
                }
                if f.spec.kind == FaultKind::DrainRegion {
                    let r = mesh
                        .admin()
                        .await?
                        .drain(pb::DrainRequest {
                            kind: "region".into(),
                            name: f.spec.target.clone(),
                            reason: "lab fault".into(),
                            author: "axon-lab".into(),
                            force: true,
                            ..Default::default()
                        })
                        .await
                        .map_err(run_err)?;
                    if !r.get_ref().refused.is_empty() {
                        return Err(LabError::Run(r.into_inner().refused));
                    }
                    reports[i].detect_s = Some(t.as_secs_f64() - f.spec.at_s);
                }
            }
            if started[i] && !ended[i] && end.is_some_and(|e| ts >= e) {
                ended[i] = true;
                held.ended(i, t);
                changed = true;
                if f.spec.kind == FaultKind::ControllerKill
                    && let Some((r, _)) = killed[i]
                {
                    // The replica comes back on its address and rejoins as a follower.
                    let cfg = mesh.controller_cfgs[r].clone();
                    mesh.controllers[r] = Some(restart(cfg).await?);
                }
                if f.spec.kind == FaultKind::DrainRegion {
                    mesh.admin()
                        .await?
                        .undrain(pb::UndrainRequest {
                            kind: "region".into(),
                            name: f.spec.target.clone(),
                            author: "axon-lab".into(),
                        })
                        .await
                        .map_err(run_err)?;
                }
            }
        }
        let active = active_faults(s, &started, &ended);
        if changed {
            last_event = t;
            apply_pipe(&mesh, s, &active)?;
            truth = true_world(s, &active);
            oracle = oracle_of(&truth);
        }

        // What the agents hold now.
        let now = applied(&mesh, s);
        for a in 0..n {
            for b in 0..n {
                if now[a][b] != prev[a][b] && prev[a][b].is_some() {
                    changes += 1;
                    // A pair a fault in force has not converged yet moving is that fault's
                    // convergence, however late, not a flap; so is a pair of a fault that
                    // ended moving before the fault's recovery is complete (a return to the
                    // oracle's path, or a last move away from a link seen lossy just as the
                    // fault ended).
                    let converging = s.faults.iter().enumerate().any(|(i, _)| {
                        let pending = if ended[i] {
                            reports[i].recover_s.is_none()
                        } else {
                            reports[i].converge_s.is_none()
                        };
                        started[i] && pending && affected[i].contains(&(a, b))
                    });
                    let restored = now[a][b].as_deref().is_some_and(|p| {
                        mesh.leader()
                            .is_some_and(|l| restored_to(&l.shared.core(), &s.world, a, b, p))
                    });
                    let returning = held.changed((a, b), now[a][b].as_deref(), t, restored);
                    let flap = t > TRANSIENT
                        && t.saturating_sub(last_event) > TRANSIENT
                        && !converging
                        && !returning;
                    if !flap && std::env::var_os("AXON_LAB_DEBUG").is_some() {
                        // Every other change too, with the leader's reason.
                        let why = mesh
                            .leader()
                            .and_then(|l| entry_of(&l.shared.core(), &s.world, a, b))
                            .map(|e| e.reason);
                        eprintln!(
                            "t={ts:.1} change {a}->{b}: {:?} -> {:?}: {why:?}",
                            prev[a][b], now[a][b]
                        );
                    }
                    if flap {
                        flaps += 1;
                        if opts.live {
                            // A change no fault explains: say which pair and why, so that a
                            // flap can be looked into.
                            let inv = &s.world.inventory;
                            let name = |p: &Option<Vec<usize>>| {
                                p.as_ref().map_or_else(
                                    || "none".to_string(),
                                    |p| {
                                        p.iter()
                                            .map(|&x| inv.site(x as u16).id.as_str())
                                            .collect::<Vec<_>>()
                                            .join(">")
                                    },
                                )
                            };
                            let Some(leader) = mesh.leader() else { continue };
                            let core = leader.shared.core();
                            let why = entry_of(&core, &s.world, a, b);
                            live.event(&format!(
                                "t={ts:>5.1}s  flap {} -> {}: {}",
                                name(&prev[a][b]),
                                name(&now[a][b]),
                                why.map_or_else(
                                    || "no route".into(),
                                    |e| controller::core::reason_text(&e.reason)
                                )
                            ));
                            if std::env::var_os("AXON_LAB_DEBUG").is_some() {
                                for p in [&prev[a][b], &now[a][b]].into_iter().flatten() {
                                    for w in p.windows(2) {
                                        let v = core.world().links.get(w[0] as u16, w[1] as u16);
                                        eprintln!("    {}->{} {:?}", w[0], w[1], v.map(|v| v.metrics));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        prev = now;

        // A killed leader: detected when another replica leads under a later epoch, converged
        // when every agent holds a table of that epoch.
        for (i, kill) in killed.iter().enumerate() {
            let (Some((_, old)), Some(epoch)) = (*kill, mesh.epoch()) else {
                continue;
            };
            let at = s.faults[i].spec.at_s;
            if epoch > old && reports[i].detect_s.is_none() {
                reports[i].detect_s = Some(ts - at);
            }
            let all_on_it = mesh
                .agents
                .iter()
                .all(|a| a.state.table().is_some_and(|t| t.version().0 >= epoch));
            if epoch > old && all_on_it && reports[i].converge_s.is_none() {
                reports[i].converge_s = Some(ts - at);
            }
        }

        // Detection and convergence of each active fault.
        if let Some(leader) = mesh.leader() {
            let core = leader.shared.core();
            let links = &core.world().links;
            if std::env::var_os("AXON_LAB_DEBUG").is_some() && ((ts * 10.0).round() as u64).is_multiple_of(10)
            {
                // Links the controller holds degraded: their windows and the emulator's drops,
                // to tell a network's losses from the hosts'.
                for a in 0..n {
                    for b in a + 1..n {
                        let Some(v) = links.get(a as u16, b as u16) else {
                            continue;
                        };
                        let Some(st) = core.link_state(a, b) else { continue };
                        let lossy_window = st.history().last().is_some_and(|w| w.sent >= w.received + 3);
                        if v.health != LinkHealth::Degraded && !lossy_window {
                            continue;
                        }
                        let w: Vec<String> = st
                            .history()
                            .map(|w| format!("{}/{}@{:.0}", w.received, w.sent, w.rtt_p99_ms))
                            .collect();
                        eprintln!(
                            "  t={ts:.1} degraded {a}->{b}: loss {:.4} se {:.4}, windows {}, pipes lost/in {}",
                            v.metrics.loss,
                            v.metrics.loss_se,
                            w.join(" "),
                            pipe_counters(&mesh, a, b)
                        );
                    }
                }
            }
            for (i, f) in s.faults.iter().enumerate() {
                if !started[i] || ended[i] || f.spec.kind == FaultKind::ControllerKill {
                    continue;
                }
                let (hit_links, hit_sites) = &hit[i];
                if reports[i].detect_s.is_none() {
                    let seen = |a: usize, b: usize| {
                        let v = links.get(a as u16, b as u16);
                        let base = s.world.links.get(a as u16, b as u16).map(|x| x.metrics);
                        match (f.spec.kind, v, base) {
                            (FaultKind::Blackhole | FaultKind::SiteDown, Some(v), _) => {
                                v.health == LinkHealth::Down
                            }
                            (FaultKind::Blackhole | FaultKind::SiteDown, None, _) => true,
                            (FaultKind::Loss, Some(v), Some(b)) => {
                                v.health != LinkHealth::Up || v.metrics.loss >= b.loss + f.spec.value / 2.0
                            }
                            (FaultKind::Delay, Some(v), Some(b)) => {
                                v.metrics.rtt_ms >= b.rtt_ms + f.spec.value / 2.0
                            }
                            (FaultKind::Jitter, Some(v), Some(b)) => jitter_fault_seen(
                                v.metrics.jitter_ms,
                                b.jitter_ms + s.run.noise.jitter_ms,
                                f.spec.value,
                            ),
                            _ => false,
                        }
                    };
                    let mut any = hit_links.iter().any(|&(a, b)| seen(a, b));
                    for &x in hit_sites {
                        any |= (0..n).filter(|&y| y != x).any(|y| seen(x, y) || seen(y, x));
                    }
                    if any && f.spec.kind != FaultKind::DrainRegion {
                        reports[i].detect_s = Some(ts - f.spec.at_s);
                    } else if f.spec.kind == FaultKind::Loss
                        && std::env::var_os("AXON_LAB_DEBUG").is_some()
                        && ((ts * 10.0).round() as u64).is_multiple_of(10)
                    {
                        // A loss not seen yet: each fault link's last windows (sent/received)
                        // and loss counts, both ways.
                        for &(a, b) in hit_links {
                            let Some(st) = core.link_state(a, b) else { continue };
                            let w: Vec<String> = st
                                .history()
                                .map(|w| format!("{}/{}", w.received, w.sent))
                                .collect();
                            let (cs, cl) = st.loss_counts();
                            eprintln!(
                                "  t={ts:.1} loss {a}->{b}: counts {cl:.1}/{cs:.0}, windows {}, pipes lost/in {}",
                                w.join(" "),
                                pipe_counters(&mesh, a, b)
                            );
                        }
                    }
                }
                if reports[i].converge_s.is_none() {
                    let relays_only =
                        f.spec.kind == FaultKind::DrainRegion || f.spec.kind == FaultKind::SiteDown;
                    // Loss, delay and jitter faults converge when the pair holds the oracle's
                    // choice or any path that avoids the fault; blackholes must be avoided.
                    let done = affected[i].iter().all(|&(a, b)| {
                        prev[a][b]
                            .as_ref()
                            .is_some_and(|p| !uses(p, hit_links, hit_sites, relays_only))
                            || (matches!(
                                f.spec.kind,
                                FaultKind::Loss | FaultKind::Delay | FaultKind::Jitter
                            ) && prev[a][b].as_ref().is_some_and(|p| {
                                let o = &oracle.1.get(a, b).primary;
                                !o.is_none()
                                    && o.sites().iter().map(|&x| usize::from(x)).eq(p.iter().copied())
                            }))
                    });
                    if done {
                        reports[i].converge_s = Some(ts - f.spec.at_s);
                    } else if std::env::var_os("AXON_LAB_DEBUG").is_some()
                        && ((ts * 10.0).round() as u64).is_multiple_of(30)
                    {
                        // Why a fault has not converged: each affected pair's path, the
                        // oracle's, and the controller's reason.
                        for &(a, b) in &affected[i] {
                            eprintln!(
                                "  unconverged {} {a}->{b}: applied {:?}, oracle {:?}, {}",
                                f.spec.kind.as_str(),
                                prev[a][b],
                                oracle.1.get(a, b).primary.sites(),
                                reason_of(&core, &s.world, a, b)
                            );
                            if let Some(m) = core.hysteresis().get(a as u16, b as u16) {
                                eprintln!(
                                    "    memory: pending {:?} streak {} patience {}",
                                    m.pending.sites(),
                                    m.streak,
                                    m.patience
                                );
                            }
                            // The controller's view of the oracle's links.
                            let links = oracle.1.get(a, b).primary.links();
                            print_links(&core, links.map(|(x, y)| (usize::from(x), usize::from(y))));
                        }
                    }
                }
            }
        }

        // The network's first loss in a loss fault.
        for (i, f) in s.faults.iter().enumerate() {
            if let Some(before) = drops_at_start[i]
                && reports[i].first_drop_s.is_none()
                && !ended[i]
                && dropped(&mesh, &hit[i].0) > before
            {
                reports[i].first_drop_s = Some(ts - f.spec.at_s);
            }
            if let Some(before) = probes_lost_at_start[i]
                && reports[i].first_probe_lost_s.is_none()
                && !ended[i]
                && probes_lost(&mesh, &s.world, &hit[i].0) > before
            {
                reports[i].first_probe_lost_s = Some(ts - f.spec.at_s);
            }
        }

        // A pair's applied path against the oracle's: the cost ratio on the true matrix
        // (infinite when the applied path is unusable there), `None` when the oracle has no
        // path for it.
        let off_oracle = |a: usize, b: usize| -> Option<f64> {
            let (cm, routes) = &oracle;
            let best = routes.get(a, b);
            if best.primary.is_none() {
                return None;
            }
            Some(
                prev[a][b]
                    .as_ref()
                    .and_then(|p| path_cost(cm, p, weights.relay_penalty_ms))
                    .map_or(f64::INFINITY, |c| c / f64::from(best.primary_cost).max(1e-6)),
            )
        };

        // Recovery: once a fault is over, its pairs back within 2% of the oracle.
        for (i, f) in s.faults.iter().enumerate() {
            let Some(end) = f.spec.duration_s.map(|d| f.spec.at_s + d) else {
                continue;
            };
            if !ended[i] || reports[i].recover_s.is_some() || f.spec.kind == FaultKind::ControllerKill {
                continue;
            }
            let (cm, routes) = &oracle;
            let back = affected[i]
                .iter()
                .all(|&(a, b)| off_oracle(a, b).is_none_or(|r| r <= 1.02));
            if back {
                reports[i].recover_s = Some((ts - end).max(0.0));
            } else if ((ts * 10.0).round() as u64).is_multiple_of(10) {
                // Once a second: the pair furthest off the oracle, and why the leader keeps it.
                let worst = affected[i]
                    .iter()
                    .filter_map(|&(a, b)| off_oracle(a, b).filter(|&r| r > 1.02).map(|r| (r, a, b)))
                    .max_by(|x, y| x.0.total_cmp(&y.0));
                if let Some((ratio, a, b)) = worst {
                    let why = mesh
                        .leader()
                        .and_then(|l| entry_of(&l.shared.core(), &s.world, a, b))
                        .map_or_else(
                            || "no leader table".to_string(),
                            |e| controller::core::reason_text(&e.reason),
                        );
                    let name = |x: usize| s.world.inventory.site(x as u16).id.to_string();
                    let on: Vec<String> = prev[a][b].iter().flatten().map(|&x| name(x)).collect();
                    let oracle: Vec<String> = routes
                        .get(a, b)
                        .primary
                        .sites()
                        .iter()
                        .map(|&x| name(usize::from(x)))
                        .collect();
                    // A path another fault has cut since costs nothing finite.
                    let cost = if ratio.is_finite() {
                        format!("at {ratio:.3}x the cost of")
                    } else {
                        "unusable on the true matrix now, against".to_string()
                    };
                    reports[i].recover_held_by = Some(format!(
                        "{} -> {} at {:.0} s after the fault: on {} {cost} the oracle's {}; {why}",
                        name(a),
                        name(b),
                        ts - end,
                        on.join(" > "),
                        oracle.join(" > "),
                    ));
                }
            }
            if !back
                && std::env::var_os("AXON_LAB_DEBUG").is_some()
                && ((ts * 10.0).round() as u64).is_multiple_of(50)
            {
                // Every 5 s: the fault's pairs not back yet, with the leader's reason.
                for &(a, b) in &affected[i] {
                    let best = routes.get(a, b);
                    let c = prev[a][b]
                        .as_ref()
                        .and_then(|p| path_cost(cm, p, weights.relay_penalty_ms));
                    let why = mesh
                        .leader()
                        .and_then(|l| entry_of(&l.shared.core(), &s.world, a, b))
                        .map(|e| (e.primary, e.reason));
                    eprintln!(
                        "  t={ts:.1} RECOVER {} {a}->{b}: applied {:?} cost {c:?} oracle {:?} {:.1} why {why:?}",
                        f.spec.kind.as_str(),
                        prev[a][b],
                        best.primary.sites(),
                        best.primary_cost
                    );
                }
                // The fault's links as the leader holds them: their windows (received/sent)
                // and loss estimate, to tell a slow heal from a link still losing.
                if let Some(leader) = mesh.leader() {
                    let core = leader.shared.core();
                    for &(a, b) in &hit[i].0 {
                        let Some(st) = core.link_state(a, b) else { continue };
                        let w: Vec<String> = st
                            .history()
                            .map(|w| format!("{}/{}", w.received, w.sent))
                            .collect();
                        let v = core.world().links.get(a as u16, b as u16).map(|v| v.metrics);
                        eprintln!(
                            "    {a}->{b} loss {:?} se {:?} windows {}, bursts (all, heal) {:?} / {:?}",
                            v.map(|m| m.loss),
                            v.map(|m| m.loss_se),
                            w.join(" "),
                            peer_bursts(&mesh, s, a, b),
                            peer_bursts(&mesh, s, b, a)
                        );
                    }
                }
            }
        }

        // Route quality against the oracle, outside transients.
        if t >= next_quality {
            next_quality = t + Duration::from_secs(1);
            if t.saturating_sub(last_event) > TRANSIENT {
                if let Some(leader) = mesh.leader() {
                    errors.sample(leader.shared.core().world(), &truth, n, false);
                }
                let (_, routes) = &oracle;
                for a in 0..n {
                    for b in 0..n {
                        let best = routes.get(a, b);
                        let Some(ratio) = off_oracle(a, b).filter(|_| a != b) else {
                            continue;
                        };
                        within += usize::from(ratio <= 1.02);
                        if ratio > 1.02 && std::env::var_os("AXON_LAB_DEBUG").is_some() {
                            let o: Vec<usize> =
                                best.primary.sites().iter().map(|&x| usize::from(x)).collect();
                            let Some(leader) = mesh.leader() else { continue };
                            let core = leader.shared.core();
                            let view = core.world().links.get(a as u16, b as u16).copied();
                            let why = entry_of(&core, &s.world, a, b);
                            eprintln!(
                                "t={ts:.0} {a}->{b} applied {:?} ratio {ratio:.3} oracle {o:?} direct {view:?} why {:?}",
                                prev[a][b],
                                why.map(|e| (e.primary, e.reason))
                            );
                        }
                        ratios.push(ratio);
                        if let Some(p) = prev[a][b].as_deref() {
                            direct.sample(&oracle.0, (a, b), p, best.primary_cost);
                        }
                    }
                }
            }
        }
        if opts.live && t >= next_live {
            next_live = t + Duration::from_millis(500);
            // Counted at the agents: with several replicas each knows only its own watchers.
            let (agents, worst) = mesh.leader().map_or_else(
                || ("none: no leader".to_string(), None),
                |l| {
                    let latest = l
                        .shared
                        .published
                        .borrow()
                        .as_ref()
                        .map(|p| (p.id.epoch.0, p.id.version.0));
                    let on = mesh
                        .agents
                        .iter()
                        .filter(|a| a.state.table().map(|t| t.version()) == latest)
                        .count();
                    (format!("{on}/{n}"), worst_link(&l.shared.core(), s))
                },
            );
            live.status(&crate::live::Status {
                elapsed: t,
                duration,
                faults: active
                    .iter()
                    .map(|f| {
                        format!("{} {}", f.spec.kind.as_str(), f.spec.target)
                            .trim()
                            .to_string()
                    })
                    .collect(),
                changes,
                agents,
                worst,
            });
        }
    }
    if opts.live {
        live.finish();
    }

    // Measurement accuracy: the controller's smoothed view against the truth, over the run's
    // settled stretches; a run with none (a short one, or faults all along) is read at its end.
    // `AXON_LAB_DEBUG` prints each link's error at the end either way.
    let print = std::env::var_os("AXON_LAB_DEBUG").is_some();
    if errors.rtt.is_empty() || print {
        let active = active_faults(s, &started, &ended);
        let leader = mesh
            .leader()
            .ok_or_else(|| LabError::Run("no controller leads at the end of the run".into()))?;
        let mut end = MeasurementErrors::default();
        end.sample(leader.shared.core().world(), &true_world(s, &active), n, print);
        if errors.rtt.is_empty() {
            errors = end;
        }
    }
    let MeasurementErrors {
        rtt: rtt_err,
        loss: loss_err,
        jitter: jitter_err,
    } = errors;
    let bytes: u64 = mesh
        .pipes
        .values()
        .map(|(p, _, _)| {
            [Way::Forward, Way::Backward]
                .iter()
                .map(|w| {
                    let st = p.stats(*w);
                    st.received_bytes.load(std::sync::atomic::Ordering::Relaxed)
                        + 28 * st.received.load(std::sync::atomic::Ordering::Relaxed)
                })
                .sum::<u64>()
        })
        .sum();
    let pairs = (n * (n - 1)).max(1) as f64;
    let elapsed = t0.elapsed().as_secs_f64();

    // Poor pairs: the direct path breaks the voice thresholds on the true matrix (no fault).
    let base = &true_world(s, &[]);
    let (_, base_routes) = oracle_of(base);
    let (mut poor, mut fixable, mut fixed) = (0, 0, 0);
    for a in 0..n {
        for b in 0..n {
            if a == b || meets_voice(base, &[a, b]) {
                continue;
            }
            poor += 1;
            let o = &base_routes.get(a, b).primary;
            let o: Vec<usize> = o.sites().iter().map(|&x| usize::from(x)).collect();
            let can_fix = !o.is_empty() && meets_voice(base, &o);
            fixable += usize::from(can_fix);
            if prev[a][b].as_ref().is_some_and(|p| meets_voice(base, p)) {
                fixed += 1;
            } else if can_fix {
                // A target missed: always said why, on stderr.
                eprintln!(
                    "  poor pair {a}->{b} not fixed: applied {:?}, oracle {o:?}",
                    prev[a][b]
                );
                // The leader's reason and its view of the direct link and the oracle's links.
                if let Some(leader) = mesh.leader() {
                    let core = leader.shared.core();
                    eprintln!("    {}", reason_of(&core, &s.world, a, b));
                    print_links(
                        &core,
                        std::iter::once((a, b)).chain(o.windows(2).map(|w| (w[0], w[1]))),
                    );
                }
            }
        }
    }
    // Faults that started within the run, by kind.
    let counted: Vec<&FaultReport> = reports
        .iter()
        .zip(&started)
        .filter(|&(_, &on)| on)
        .map(|(r, _)| r)
        .collect();
    let mut by_kind: std::collections::BTreeMap<String, Vec<Option<f64>>> = Default::default();
    for r in &counted {
        by_kind.entry(r.kind.clone()).or_default().push(r.converge_s);
    }
    let convergence_s = Convergence::of(counted.iter().map(|r| r.converge_s));
    let convergence_by_kind_s = by_kind
        .into_iter()
        .map(|(k, v)| (k, Convergence::of(v)))
        .collect();
    let finite: Vec<f64> = ratios.iter().copied().filter(|r| r.is_finite()).collect();
    let mut report = Report {
        scenario: s.name.clone(),
        sites: n,
        duration_s: elapsed,
        probe_hz: s.run.probe_hz,
        faults: reports,
        convergence_s,
        convergence_by_kind_s,
        quality: QualityReport {
            mean_cost_ratio_vs_oracle: if finite.is_empty() {
                0.0
            } else {
                finite.iter().sum::<f64>() / finite.len() as f64
            },
            pairs_within_2pct_of_oracle: if ratios.is_empty() {
                0.0
            } else {
                within as f64 / ratios.len() as f64
            },
            poor_pairs: poor,
            poor_pairs_fixed: fixed,
            poor_pairs_fixable: fixable,
            vs_direct: direct.report(),
        },
        flaps_per_pair_hour: flaps as f64 / pairs / (elapsed / 3_600.0),
        route_changes: changes,
        tables_published: {
            let mut by_cause = std::collections::BTreeMap::new();
            for c in mesh.controllers.iter().flatten() {
                for cause in ["paths", "costs"] {
                    let n = c
                        .shared
                        .metrics
                        .tables_published
                        .with_label_values(&[cause])
                        .get();
                    *by_cause.entry(cause.to_string()).or_default() += n;
                }
            }
            by_cause
        },
        downs_held: counter_sum(&mesh, "axon_probe_downs_held_total"),
        rtt_across_stall: counter_sum(&mesh, "axon_probe_rtt_across_stall_total"),
        reports_refused: {
            for c in mesh.controllers.iter().flatten() {
                reports_refused(c, &mut refused);
            }
            refused.values().sum()
        },
        reports_refused_by: refused,
        rtt_error_ms: Spread::of(rtt_err),
        jitter_error_ms: Spread::of(jitter_err),
        loss_error_pp: if loss_err.is_empty() {
            0.0
        } else {
            loss_err.iter().sum::<f64>() / loss_err.len() as f64
        },
        emulator_late_ms: {
            let d = mesh.emulator.departures();
            Spread {
                p50: d.p50_ms,
                p99: d.p99_ms,
                max: d.max_ms,
            }
        },
        host_steal_pct: match (host0, ops::HostCpu::now()) {
            (Some(a), Some(b)) => b.steal_share_since(&a) * 100.0,
            _ => 0.0,
        },
        probe_overhead_bps_per_pair: bytes as f64 * 8.0 / pairs / elapsed,
        bursts: burst_counts(&mesh),
        cpu_seconds: ops::cpu_seconds(None).unwrap_or(0.0) - cpu0,
        targets: Vec::new(),
    };
    report.targets = s.targets.check(&report);
    if std::env::var_os("AXON_LAB_DEBUG").is_some() {
        // Probes each end counted lost against the datagrams the emulator dropped on the
        // pair's pipes: how many samples a drop costs.
        let ids: Vec<String> = s
            .world
            .inventory
            .sites()
            .iter()
            .map(|x| x.id.to_string())
            .collect();
        for a in 0..n {
            for b in a + 1..n {
                let count = |x: usize, y: usize| {
                    let m = &mesh.probers[x].metrics;
                    let l = [ids[y].as_str()];
                    (
                        m.lost.with_label_values(&l).get(),
                        m.sent.with_label_values(&l).get(),
                    )
                };
                let ((la, sa), (lb, sb)) = (count(a, b), count(b, a));
                let drops = dropped(&mesh, &[(a, b), (b, a)]);
                eprintln!("pair {a}-{b}: lost {la}/{sa} and {lb}/{sb}, emulator drops {drops}");
            }
        }
        for (i, p) in mesh.probers.iter().enumerate() {
            for mf in p.metrics.registry.gather() {
                let name = match mf.name() {
                    "axon_probe_datagrams_dropped_total" => "dropped",
                    "axon_probe_liveness_events_total" => "liveness",
                    _ => continue,
                };
                for m in mf.get_metric() {
                    let labels: Vec<String> = m
                        .get_label()
                        .iter()
                        .map(|l| format!("{}={}", l.name(), l.value()))
                        .collect();
                    eprintln!(
                        "prober {i} {name} {} {}",
                        labels.join(","),
                        m.get_counter().get_value()
                    );
                }
            }
        }
    }
    for a in mesh.agents {
        a.shutdown().await;
    }
    for p in mesh.probers {
        p.shutdown().await;
    }
    for c in mesh.controllers.into_iter().flatten() {
        c.shutdown().await;
    }
    drop(mesh.dir);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::{Held, jitter_fault_seen, rfc3550_of_uniform};
    use std::time::Duration;

    /// The truth's jitter is what the prober's own estimator reads of the emulator's uniform
    /// one-way delay: fails if the lab judges the controller against the amplitude instead.
    #[test]
    fn the_true_jitter_is_what_rfc3550_reads_of_a_uniform_delay() {
        let amplitude_ms = 3.0;
        let mut w = prober::window::Window::default();
        // A fixed linear congruential generator: the same draws every run.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut readings = Vec::new();
        for i in 0..20_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
            let rtt_ms = 100.0 + (unit * 2.0 - 1.0) * amplitude_ms;
            w.received((rtt_ms * 1e6) as u64);
            if i % 10 == 9 {
                readings.push(w.close().jitter_ms);
            }
        }
        let mean = readings[100..].iter().sum::<f64>() / (readings.len() - 100) as f64;
        let truth = rfc3550_of_uniform(amplitude_ms);
        assert!(
            (mean - truth).abs() < 0.03 * truth,
            "read {mean:.3} ms, truth {truth:.3} ms"
        );
        assert!((mean - amplitude_ms).abs() > 0.2 * amplitude_ms);
    }

    /// A jitter fault is seen in the units the controller measures: ±30 ms added to a link
    /// with ±1 ms of noise reads 20.7 ms once settled, from 0.67 ms, and is seen from a quarter
    /// of the rise (5.67 ms), not at a quarter of the amplitude (7.5 ms, an amplitude against
    /// a reading).
    #[test]
    fn a_jitter_fault_is_seen_by_what_rfc3550_reads() {
        assert!(!jitter_fault_seen(0.67, 1.0, 30.0));
        assert!(!jitter_fault_seen(5.6, 1.0, 30.0));
        assert!(jitter_fault_seen(5.7, 1.0, 30.0));
        // A link jittery by nature (±12 ms) is not taken for faulted at its own reading.
        assert!(!jitter_fault_seen(rfc3550_of_uniform(13.0) + 1.0, 13.0, 30.0));
    }

    /// A pair that leaves its path on a verdict that came as the fault ended, and goes back
    /// twenty seconds later, made no flap; the same pair leaving and coming back a minute
    /// after the fault did. Fails if every late return counts as a flap, or none.
    #[test]
    fn a_late_return_to_the_path_before_a_fault_is_its_recovery() {
        let s = Duration::from_secs;
        let (direct, relayed) = (vec![0, 1], vec![0, 2, 1]);
        let mut held = Held::new(1);
        held.began(0, (0, 1), &direct);
        held.ended(0, s(145));
        // Seen lossy as the fault ended: away within the transient after its end, back later.
        assert!(!held.changed((0, 1), Some(&relayed), s(146), false));
        assert!(held.changed((0, 1), Some(&direct), s(167), false));
        // Long after: away and back is noise.
        assert!(!held.changed((0, 1), Some(&relayed), s(200), false));
        assert!(!held.changed((0, 1), Some(&direct), s(210), false));
        // Another pair was never the fault's.
        assert!(!held.changed((1, 0), Some(&direct), s(167), false));
    }

    /// A pair the fault moved, restored later to a path costing no more than the one it
    /// held (not that path itself), recovered; a restore of a pair the fault never moved, or
    /// a second one, is counted. Fails if the controller's `Restored` is ignored, or trusted
    /// for any pair.
    #[test]
    fn a_restore_to_another_path_after_a_fault_is_its_recovery() {
        let s = Duration::from_secs;
        let (before, detour, other) = (vec![0, 2, 1], vec![0, 3, 1], vec![0, 4, 1]);
        let mut held = Held::new(1);
        held.began(0, (0, 1), &before);
        assert!(!held.changed((0, 1), Some(&detour), s(38), false));
        held.ended(0, s(43));
        assert!(held.changed((0, 1), Some(&other), s(55), true));
        // Recovered once: the next restore is a move like any other.
        assert!(!held.changed((0, 1), Some(&detour), s(90), true));
        // Not a pair the fault held.
        assert!(!held.changed((1, 0), Some(&other), s(55), true));
    }
}
