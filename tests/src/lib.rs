//! A whole Axon mesh on loopback for the integration tests: probers (real QUIC through the
//! WAN emulator), a controller, and one agent per site, all with OS-chosen ports.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a panic is the failure report

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use controller::{ControllerConfig, ControllerHandle, SiteConfig};
use prober::tls::{generate_mesh, mesh_files};
use prober::{PeerConfig, ProberConfig, ProberHandle};
use serde_json::Value;
use wan::{Emulator, EmulatorConfig, LinkParams, Pipe, Way};

/// Meshes started by this process: each puts its probers on a loopback network of its own
/// (see `Mesh::around`).
static PROBER_NETS: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// One site of a test mesh.
#[derive(Debug, Clone)]
pub struct SiteSpec {
    /// Site id.
    pub id: &'static str,
    /// Region.
    pub region: &'static str,
}

/// The four sites most tests use: a and b in regions of their own, c and d sharing r3, so that
/// a region drain takes two sites and leaves the others.
pub fn four_sites() -> Vec<SiteSpec> {
    [("a", "r1"), ("b", "r2"), ("c", "r3"), ("d", "r3")]
        .into_iter()
        .map(|(id, region)| SiteSpec { id, region })
        .collect()
}

/// The round trips of [`four_sites`] most tests use, ms: a–b is slow direct (100 ms) but fast
/// through c (20 + 20 ms); d is 80 ms from everyone.
pub fn relay_rtt(a: &str, b: &str) -> u64 {
    let pair = if a < b { (a, b) } else { (b, a) };
    match pair {
        ("a", "b") => 100,
        ("a", "c") | ("b", "c") => 20,
        _ => 80,
    }
}

/// A running mesh.
pub struct Mesh {
    /// Certificates and state files.
    pub dir: tempfile::TempDir,
    /// The emulator carrying every probe.
    pub emulator: Emulator,
    /// `pipes[(from, to)]`: the pipe `from`'s prober dials `to` through.
    pub pipes: HashMap<(String, String), Pipe>,
    /// Probers by site.
    pub probers: HashMap<String, ProberHandle>,
    /// The controller (the first replica when there are several).
    pub controller: Option<ControllerHandle>,
    /// The other replicas, when the controllers share an etcd (see [`Mesh::start_replicated`]).
    pub replicas: Vec<Option<ControllerHandle>>,
    /// Agents by site.
    pub agents: HashMap<String, agent::AgentHandle>,
    /// The controller's configuration (to restart it).
    pub controller_cfg: ControllerConfig,
    /// The sites.
    pub sites: Vec<SiteSpec>,
}

/// The gRPC endpoint URL of a controller.
pub fn endpoint(c: &ControllerHandle) -> String {
    format!("http://{}", c.grpc_addr)
}

/// A controller config for these sites on loopback.
pub fn controller_config(sites: &[SiteSpec], snapshot: Option<PathBuf>) -> ControllerConfig {
    let mut cfg = ControllerConfig {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        tick_ms: 200,
        resync_ms: 5_000,
        sites: sites
            .iter()
            .map(|s| SiteConfig {
                id: s.id.into(),
                region: s.region.into(),
                provider: "metal".into(),
                lat: 0.0,
                lon: 0.0,
                capacity: 1_000,
                role: topology::Role::Active,
            })
            .collect(),
        ..Default::default()
    };
    cfg.store.snapshot = snapshot;
    // Windows every 500 ms: a link is judged on a few of them, and loss is remembered for
    // 10 s rather than a minute so that a test sees a recovery within its deadlines.
    cfg.links.down_after = 2;
    cfg.links.loss_memory_windows = 20.0;
    cfg.guardrails.max_drained_fraction = 0.6;
    cfg.guardrails.min_active_regions = 1;
    cfg
}

/// An agent config for `site` against `controllers`.
pub fn agent_config(dir: &Path, site: &str, controllers: Vec<String>) -> agent::AgentConfig {
    agent::AgentConfig {
        node: format!("{site}-node"),
        site: site.into(),
        controllers,
        table_file: dir.join(format!("agent-{site}")).join("table.pb"),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
        backoff_min_ms: 50,
        backoff_max_ms: 500,
        ..Default::default()
    }
}

impl Mesh {
    /// Starts every part; `rtt(a, b)` is the injected round trip of the pair in ms.
    pub async fn start(sites: Vec<SiteSpec>, rtt: impl Fn(&str, &str) -> u64) -> Mesh {
        Mesh::start_tuned(sites, rtt, |_| {}).await
    }

    /// [`Mesh::start`], with the controller's configuration passed through `tune` first.
    pub async fn start_controlled(
        sites: Vec<SiteSpec>,
        rtt: impl Fn(&str, &str) -> u64,
        tune: impl Fn(&mut ControllerConfig),
    ) -> Mesh {
        Mesh::start_with(sites, rtt, tune, |_| {}).await
    }

    /// [`Mesh::start`], with every prober's configuration passed through `tune` first.
    pub async fn start_tuned(
        sites: Vec<SiteSpec>,
        rtt: impl Fn(&str, &str) -> u64,
        tune: impl Fn(&mut ProberConfig),
    ) -> Mesh {
        Mesh::start_with(sites, rtt, |_| {}, tune).await
    }

    async fn start_with(
        sites: Vec<SiteSpec>,
        rtt: impl Fn(&str, &str) -> u64,
        tune_controller: impl Fn(&mut ControllerConfig),
        tune_prober: impl Fn(&mut ProberConfig),
    ) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<&str> = sites.iter().map(|s| s.id).collect();
        generate_mesh(dir.path(), &ids).unwrap();
        let mut controller_cfg = controller_config(&sites, Some(dir.path().join("controller.json")));
        controller_cfg.store.journal = Some(dir.path().join("journal.jsonl"));
        tune_controller(&mut controller_cfg);
        let controller = controller::start(controller_cfg.clone()).await.unwrap();
        Mesh::around(dir, sites, rtt, vec![controller], controller_cfg, tune_prober).await
    }

    /// Starts `n` controller replicas on the etcd at `etcd_url` (leases of 2 s, a new leader
    /// publishes after 1 s), then every other part. Probers list every replica; each site's
    /// agent lists them starting from a different one, so agents watch followers too.
    pub async fn start_replicated(
        sites: Vec<SiteSpec>,
        rtt: impl Fn(&str, &str) -> u64,
        etcd_url: &str,
        n: usize,
    ) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<&str> = sites.iter().map(|s| s.id).collect();
        generate_mesh(dir.path(), &ids).unwrap();
        let mut cfg = controller_config(&sites, None);
        cfg.store.kind = "etcd".into();
        cfg.store.etcd_endpoints = vec![etcd_url.to_string()];
        cfg.store.lease_ttl_s = 2;
        cfg.store.leader_warmup_ms = 1_000;
        // History compacted every second: the followers' watches and reads must not mind.
        cfg.store.etcd_compact_s = 1;
        let mut controllers = Vec::new();
        for i in 0..n {
            let c = ControllerConfig {
                name: format!("controller-{i}"),
                ..cfg.clone()
            };
            controllers.push(controller::start(c).await.unwrap());
        }
        Mesh::around(dir, sites, rtt, controllers, cfg, |_| {}).await
    }

    async fn around(
        dir: tempfile::TempDir,
        sites: Vec<SiteSpec>,
        rtt: impl Fn(&str, &str) -> u64,
        controllers: Vec<ControllerHandle>,
        controller_cfg: ControllerConfig,
        tune: impl Fn(&mut ProberConfig),
    ) -> Mesh {
        let ids: Vec<&str> = sites.iter().map(|s| s.id).collect();
        let urls: Vec<String> = controllers.iter().map(endpoint).collect();
        let emulator = Emulator::new(EmulatorConfig::default()).unwrap();
        // Each prober gets a free port first, so that the pipes towards it exist before it
        // starts dialling. On an address of its own (127.0.M.i): the port is free only until
        // the probe socket is dropped, and the emulator's pipes, bound on 127.0.0.1 in the
        // meantime, once took one (a prober then failed to bind).
        let mesh = PROBER_NETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let net = 10 + mesh % 200;
        let mut addrs: HashMap<String, SocketAddr> = HashMap::new();
        for (i, s) in sites.iter().enumerate() {
            let ip = std::net::Ipv4Addr::new(127, 0, net, u8::try_from(i + 1).expect("under 255 sites"));
            let sock = std::net::UdpSocket::bind((ip, 0)).unwrap();
            let addr = sock.local_addr().unwrap();
            drop(sock);
            addrs.insert(s.id.into(), addr);
        }
        let mut pipes = HashMap::new();
        for a in &ids {
            for b in &ids {
                if a != b {
                    let half = LinkParams::delay(Duration::from_millis(rtt(a, b)) / 2);
                    let p = emulator.pipe(addrs[*b], half.clone(), half).unwrap();
                    pipes.insert((a.to_string(), b.to_string()), p);
                }
            }
        }
        let mut probers = HashMap::new();
        for a in &ids {
            let mut cfg = ProberConfig {
                site: a.to_string(),
                listen: addrs[*a],
                metrics_listen: Some("127.0.0.1:0".parse().unwrap()),
                window_ms: 500,
                tls: mesh_files(dir.path(), a),
                peers: ids
                    .iter()
                    .filter(|b| *b != a)
                    .map(|b| PeerConfig {
                        site: b.to_string(),
                        addr: pipes[&(a.to_string(), b.to_string())].front_addr(),
                    })
                    .collect(),
                redial_min_ms: 50,
                redial_max_ms: 500,
                report: prober::ReportConfig {
                    endpoints: urls.clone(),
                    backoff_min_ms: 50,
                    backoff_max_ms: 500,
                    ..Default::default()
                },
                ..Default::default()
            };
            tune(&mut cfg);
            probers.insert(a.to_string(), prober::start(cfg).await.unwrap());
        }
        let mut agents = HashMap::new();
        for (i, a) in ids.iter().enumerate() {
            let mut order = urls.clone();
            order.rotate_left(i % urls.len());
            let cfg = agent_config(dir.path(), a, order);
            agents.insert(a.to_string(), agent::start(cfg).await.unwrap());
        }
        let mut controllers = controllers.into_iter();
        Mesh {
            dir,
            emulator,
            pipes,
            probers,
            controller: controllers.next(),
            replicas: controllers.map(Some).collect(),
            agents,
            controller_cfg,
            sites,
        }
    }

    /// Changes the link between `from` and `to`: every pipe of the pair, each way. The pair's
    /// two sites share one probing connection (through the pipe of whichever dialled), so a
    /// change to the link is a change to both pipes.
    fn update_link(&self, from: &str, to: &str, change: impl Fn(LinkParams) -> LinkParams) {
        for key in [(from, to), (to, from)] {
            let p = &self.pipes[&(key.0.to_string(), key.1.to_string())];
            for way in [Way::Forward, Way::Backward] {
                p.set(way, change(p.params(way))).unwrap();
            }
        }
    }

    /// Sets the random loss of the link between `from` and `to`, each way.
    pub fn set_loss(&self, from: &str, to: &str, loss: f64) {
        self.update_link(from, to, |p| LinkParams { loss, ..p });
    }

    /// Sets the one-way delay of the link between `from` and `to`, each way (its round trip
    /// is twice this).
    pub fn set_delay(&self, from: &str, to: &str, one_way: Duration) {
        self.update_link(from, to, |p| LinkParams { delay: one_way, ..p });
    }

    /// Blackholes (or heals) the link between `from` and `to`, both ways.
    pub fn blackhole(&self, from: &str, to: &str, on: bool) {
        self.update_link(from, to, |p| LinkParams { blackhole: on, ..p });
    }

    /// The agent of `site`'s answer for `GET path`: (status, JSON body).
    pub async fn agent_get(&self, site: &str, path: &str) -> (u16, Value) {
        http_get(self.agents[site].http_addr, path).await
    }

    /// The primary path `from`'s agent holds towards `to`, if any.
    pub async fn primary(&self, from: &str, to: &str) -> Option<Vec<String>> {
        let (status, v) = self.agent_get(from, &format!("/v1/routes/{to}")).await;
        if status != 200 {
            return None;
        }
        let sites = v["route"]["primary"]["sites"].as_array()?;
        Some(
            sites
                .iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect(),
        )
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        for (_, a) in self.agents.drain() {
            a.shutdown().await;
        }
        for (_, p) in self.probers.drain() {
            p.shutdown().await;
        }
        if let Some(c) = self.controller.take() {
            c.shutdown().await;
        }
        for c in self.replicas.drain(..).flatten() {
            c.shutdown().await;
        }
    }

    /// Every running controller, first replica first, with its index.
    pub fn running(&self) -> impl Iterator<Item = (usize, &ControllerHandle)> {
        std::iter::once(self.controller.as_ref())
            .chain(self.replicas.iter().map(Option::as_ref))
            .enumerate()
            .filter_map(|(i, c)| Some((i, c?)))
    }

    /// The index of the replica that leads, if exactly one does.
    pub fn leader(&self) -> Option<usize> {
        let leaders: Vec<usize> = self
            .running()
            .filter(|(_, c)| c.shared.leadership.borrow().is_leader())
            .map(|(i, _)| i)
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// Takes replica `i` out of the mesh (to kill or stop it).
    pub fn take_replica(&mut self, i: usize) -> Option<ControllerHandle> {
        match i {
            0 => self.controller.take(),
            _ => self.replicas.get_mut(i - 1)?.take(),
        }
    }
}

/// GET over plain HTTP/1.1: (status, JSON body or the text as a JSON string); status 0 when
/// nothing listens (a process still starting).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, Value) {
    http_request(addr, "GET", path, "").await
}

/// Any request over plain HTTP/1.1 with a JSON body (empty: none), answered as [`http_get`].
pub async fn http_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return (0, Value::Null);
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

/// Polls `f` until it returns `Some`, or panics after `within`. With `AXON_TEST_TIMING` set,
/// prints how long each condition took (to see how close a test runs to its deadlines).
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let started = Instant::now();
    loop {
        if let Some(t) = f().await {
            if std::env::var("AXON_TEST_TIMING").is_ok() {
                eprintln!("TIMING {what}: {:?}", started.elapsed());
            }
            return t;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A workspace binary built next to the running test (by `cargo test --workspace`, as the
/// daemons' own integration tests require them).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (or `cargo test --workspace`)",
        path.display()
    );
    path
}

/// A child process killed when the test ends, whatever happens.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
