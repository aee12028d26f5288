//! The async shell: a quinn endpoint sharing one connection with every peer site.
//!
//! One task per configured peer owns that peer's [`PeerSession`] and the pair's connection:
//! the site whose id sorts first dials at once (with back-off), the other only after
//! `dial_grace_ms` without one, and if both connections come up both sides keep the one the
//! first site dialled (the other is closed as superseded, which is no outage). The task asks
//! on a 10 Hz timer with a random phase, answers the peer's asks at once, feeds every datagram
//! to the session, asks again every half interval while an ask is missing, polls the session
//! at its next deadline and closes a window every `window_ms`.
//!
//! An incoming connection is routed by its first valid datagram: the site tag must name a site
//! the peer's certificate proves. A configured peer's task takes it over; any other site is
//! answered the same way by a task of its own, without windows. Everything the tasks learn
//! leaves as [`Output`] on a broadcast channel that the report stream, the lab and the tests
//! subscribe to.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use topology::SiteId;
use tracing::{debug, info};

use crate::config::ProberConfig;
use crate::congestion::FixedWindowConfig;
use crate::error::ProberError;
use crate::liveness::LivenessEvent;
use crate::metrics::Metrics;
use crate::report::EvidenceAsks;
use crate::session::{BurstSlots, EchoKind, PeerSession, Reply, SessionConfig};
use crate::tls::{TlsMaterial, peer_cert};
use crate::window::WindowReport;
use crate::wire::{Datagram, MAX_PROBE, site_tag};

/// Incoming connections beyond this are refused: a mesh has far fewer peers.
const MAX_INCOMING: usize = 4_096;
/// The close code of a connection dropped because the pair keeps another one.
const SUPERSEDED: u32 = 1;
/// How long an incoming connection may take to send a first valid datagram.
const IDENTIFY_WITHIN: Duration = Duration::from_secs(10);

/// One peer's closed window.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerWindow {
    /// The probed site.
    pub peer: SiteId,
    /// Wall-clock bounds, Unix ms.
    pub start_unix_ms: u64,
    /// Wall-clock bounds, Unix ms.
    pub end_unix_ms: u64,
    /// Whether the connection was up for the whole window.
    pub connected: bool,
    /// What was measured.
    pub report: WindowReport,
}

/// Why liveness changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A run of missed probes, or replies returning.
    Probes,
    /// The QUIC connection closed (or came back).
    Connection,
}

impl Cause {
    /// The label used on the wire and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Probes => "probes",
            Cause::Connection => "connection",
        }
    }
}

/// A liveness change, emitted the moment it is seen.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerLiveness {
    /// The probed site.
    pub peer: SiteId,
    /// Down or up.
    pub event: LivenessEvent,
    /// Wall clock, Unix ms.
    pub at_unix_ms: u64,
    /// What triggered it.
    pub cause: Cause,
}

/// What the prober tells the world.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A window closed.
    Window(PeerWindow),
    /// Liveness changed.
    Liveness(PeerLiveness),
}

/// The monotonic clock probes are timed with, and the wall clock reports are stamped with.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    /// Monotonic nanoseconds since the prober started.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// A connection handed to a peer's task with its first datagram: one the peer dialled, or
/// one an answering task held when a reload made the peer one this prober measures.
struct Accepted {
    conn: quinn::Connection,
    first: Datagram,
    /// Whether the site whose id sorts first dialled it (see [`Link::canonical`]).
    canonical: bool,
    /// The session an answering task kept on this connection: the peer's sequence numbers
    /// and echoes go on where they were (`None` for a connection new to this prober).
    session: Option<Box<PeerSession>>,
}

/// A peer this prober measures: where its accepted connections go, and how a reload stops
/// measuring it.
struct PeerEntry {
    id: SiteId,
    inbox: mpsc::Sender<Accepted>,
    /// Cancelled when a reload removes the peer: its task stops measuring and only answers
    /// on the connection it holds, so the peer, if it still measures this site, loses
    /// nothing.
    demote: CancellationToken,
}

struct Shared {
    me: SiteId,
    /// Configured peers by site tag (a reload adds and removes them).
    peers: Mutex<HashMap<u32, PeerEntry>>,
    cfg: ProberConfig,
    session: SessionConfig,
    endpoint: quinn::Endpoint,
    /// The client side of the handshake (a reload swaps it for re-read certificates).
    client: Mutex<quinn::ClientConfig>,
    metrics: Metrics,
    outputs: broadcast::Sender<Output>,
    clock: Clock,
    /// Evidence bursts running at once, over every peer (see `BurstConfig::max_share`).
    burst_slots: Arc<BurstSlots>,
    /// Bursts the controller asked for, by peer, until the peer's task takes them.
    asks: Arc<EvidenceAsks>,
}

impl Shared {
    fn emit(&self, o: Output) {
        // No subscriber is not an error: metrics still carry the state.
        let _ = self.outputs.send(o);
    }

    fn emit_liveness(&self, peer: &SiteId, event: LivenessEvent, cause: Cause) {
        let state = match event {
            LivenessEvent::Down => "down",
            LivenessEvent::Up => "up",
        };
        info!(site = %self.me, peer = %peer, state, cause = cause.as_str(), "link liveness changed");
        self.metrics
            .liveness_events
            .with_label_values(&[peer.as_str(), state])
            .inc();
        self.emit(Output::Liveness(PeerLiveness {
            peer: peer.clone(),
            event,
            at_unix_ms: ops::unix_ms(),
            cause,
        }));
    }

    fn drop_datagram(&self, reason: &str) {
        self.metrics.dropped.with_label_values(&[reason]).inc();
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<u32, PeerEntry>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The inbox of the task measuring `site`, if this prober measures it.
    fn measuring(&self, tag: u32, site: &SiteId) -> Option<mpsc::Sender<Accepted>> {
        self.peers()
            .get(&tag)
            .filter(|e| e.id == *site)
            .map(|e| e.inbox.clone())
    }
}

/// A running prober. Dropping it does not stop it; call [`ProberHandle::shutdown`].
pub struct ProberHandle {
    /// The QUIC endpoint's bound address.
    pub local_addr: SocketAddr,
    /// The HTTP address of `/metrics` and `/healthz`, if served.
    pub metrics_addr: Option<SocketAddr>,
    /// The live metrics.
    pub metrics: Metrics,
    outputs: broadcast::Sender<Output>,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    /// The configuration in force (what a reload is compared with).
    cfg: ProberConfig,
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeersReloaded {
    /// Peers now measured that were not (or were at another address).
    pub added: Vec<String>,
    /// Peers no longer measured (their connections are kept to answer on).
    pub removed: Vec<String>,
}

impl ProberHandle {
    /// A stream of every window and liveness event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Output> {
        self.outputs.subscribe()
    }

    /// Stops every task, closes every connection and waits for them.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.endpoint.close(0u32.into(), b"shutdown");
        while self.tasks.join_next().await.is_some() {}
        self.endpoint.wait_idle().await;
    }

    /// QUIC connections open now: one per peer site once the mesh has settled.
    pub fn open_connections(&self) -> usize {
        self.endpoint.open_connections()
    }

    /// Applies a new configuration without a restart. Only `peers` may change: a peer added
    /// is dialled and measured at once, a peer removed is no longer measured (its task keeps
    /// answering on the pair's connection, so a peer that still measures this site sees no
    /// outage), a peer whose address changed is both. The other peers' connections and
    /// windows are not touched. The TLS files are read again, so certificates rotated in place
    /// serve every handshake from then on, while the connections already up go on. A file that
    /// changes any other key is refused whole, with the keys named, and nothing changes; so is
    /// one that does not validate, or TLS files that do not load. Counted in
    /// `axon_prober_config_reloads_total{result}`.
    pub fn reload(&mut self, cfg: ProberConfig) -> Result<PeersReloaded, ProberError> {
        let r = self.apply(cfg);
        let result = if r.is_ok() { "applied" } else { "refused" };
        self.metrics.config_reloads.with_label_values(&[result]).inc();
        match &r {
            Ok(p) => info!(added = ?p.added, removed = ?p.removed, "configuration reloaded"),
            Err(e) => tracing::warn!(error = %e, "configuration reload refused; the one in force stays"),
        }
        r
    }

    /// Counts a reload refused before it reached [`ProberHandle::reload`] (a file that does not
    /// parse).
    pub fn reload_refused(&self, why: &str) {
        self.metrics.config_reloads.with_label_values(&["refused"]).inc();
        tracing::warn!(
            error = why,
            "configuration reload refused; the one in force stays"
        );
    }

    fn apply(&mut self, cfg: ProberConfig) -> Result<PeersReloaded, ProberError> {
        let (_, ids) = cfg.validate()?;
        let fixed = restart_only_changes(&self.cfg, &cfg)?;
        if !fixed.is_empty() {
            return Err(ProberError::Config(format!(
                "{} cannot change without a restart; nothing applied",
                fixed.join(", ")
            )));
        }
        distinct_tags(&ids)?;
        // The certificate files are read again (a rotation replaces them in place): handshakes
        // from now on use them, connections already up keep going. Files that do not load
        // refuse the whole reload.
        install_tls(&self.endpoint, &self.shared, &cfg)?;
        let old: HashMap<String, SocketAddr> =
            self.cfg.peers.iter().map(|p| (p.site.clone(), p.addr)).collect();
        let new: HashMap<&str, SocketAddr> = cfg.peers.iter().map(|p| (p.site.as_str(), p.addr)).collect();
        let mut out = PeersReloaded::default();
        for p in self.cfg.peers.clone() {
            if new.get(p.site.as_str()) != Some(&p.addr) {
                let tag = site_tag(&p.site);
                if let Some(e) = self.shared.peers().remove(&tag) {
                    e.demote.cancel();
                }
                self.shared.asks.remove(&p.site);
                self.metrics.forget_peer(&p.site);
                out.removed.push(p.site.clone());
            }
        }
        for (p, id) in cfg.peers.iter().zip(ids) {
            if old.get(&p.site) != Some(&p.addr) {
                self.spawn_peer(id, p.addr);
                out.added.push(p.site.clone());
            }
        }
        self.shared
            .burst_slots
            .resize(self.cfg.burst.max_share, cfg.peers.len());
        self.metrics.peers.set(cfg.peers.len() as i64);
        self.cfg = cfg;
        Ok(out)
    }

    /// Registers a peer to measure and starts its task.
    fn spawn_peer(&mut self, id: SiteId, addr: SocketAddr) {
        let (tx, inbox) = mpsc::channel(4);
        let demote = CancellationToken::new();
        self.shared.asks.add(id.as_str());
        self.shared.peers().insert(
            site_tag(id.as_str()),
            PeerEntry {
                id: id.clone(),
                inbox: tx,
                demote: demote.clone(),
            },
        );
        self.metrics.peer_up.with_label_values(&[id.as_str()]).set(0);
        let role = Role::Measure { addr, inbox, demote };
        self.tasks
            .spawn(run_peer(self.shared.clone(), id, role, self.cancel.clone()));
    }

    /// The configuration in force.
    pub fn config(&self) -> &ProberConfig {
        &self.cfg
    }

    /// Resolves when the prober is asked to stop.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }
}

/// Refuses peers whose site ids share a wire tag: a datagram could not say which it is from.
fn distinct_tags(ids: &[SiteId]) -> Result<(), ProberError> {
    let mut tags = HashMap::new();
    for id in ids {
        if let Some(other) = tags.insert(site_tag(id.as_str()), id) {
            return Err(ProberError::Config(format!(
                "peers {other} and {id} share a wire tag; rename one"
            )));
        }
    }
    Ok(())
}

/// The top-level keys other than `peers` whose values differ between two configurations.
fn restart_only_changes(old: &ProberConfig, new: &ProberConfig) -> Result<Vec<String>, ProberError> {
    let as_map = |c: &ProberConfig| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(ProberError::Config("configuration is not a table".into())),
        Err(e) => Err(ProberError::Config(e.to_string())),
    };
    let (old, new) = (as_map(old)?, as_map(new)?);
    Ok(old
        .iter()
        .filter(|(k, v)| k.as_str() != "peers" && new.get(k.as_str()) != Some(v))
        .map(|(k, _)| k.clone())
        .collect())
}

/// Reads the TLS files again and puts them in force for every handshake from now on, both
/// ways; connections already up go on. Files that do not load change nothing.
fn install_tls(endpoint: &quinn::Endpoint, shared: &Shared, cfg: &ProberConfig) -> Result<(), ProberError> {
    let (server, client) = quic_configs(cfg)?;
    endpoint.set_server_config(Some(server));
    *shared.client.lock().unwrap_or_else(|e| e.into_inner()) = client;
    shared.metrics.tls.observe(&cfg.tls);
    Ok(())
}

/// Reads the TLS files and builds both sides of the QUIC handshake: the server side for the
/// connections peers dial, the client side for the dials.
fn quic_configs(cfg: &ProberConfig) -> Result<(quinn::ServerConfig, quinn::ClientConfig), ProberError> {
    let tls = TlsMaterial::load(&cfg.tls)?;
    let transport = transport(cfg)?;
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.server.clone())
        .map_err(|e| ProberError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.client.clone())
        .map_err(|e| ProberError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    Ok((server, client))
}

fn transport(cfg: &ProberConfig) -> Result<Arc<quinn::TransportConfig>, ProberError> {
    let mut t = quinn::TransportConfig::default();
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle)
            .map_err(|e| ProberError::Config(format!("idle_timeout_ms: {e}")))?,
    ));
    // Probes keep the connection busy; a keep-alive covers a probe interval longer than idle/3.
    t.keep_alive_interval(Some(idle / 3));
    // Probes are datagrams only: no streams, and no path-MTU probing bytes on the wire.
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.mtu_discovery_config(None);
    // A dial to a peer still starting is retried after a third of quinn's default 333 ms.
    t.initial_rtt(Duration::from_millis(100));
    t.datagram_receive_buffer_size(Some(256 * 1024));
    // Loss is what the prober measures, not a reason to hold probes back (see `congestion`).
    t.congestion_controller_factory(Arc::new(FixedWindowConfig::default()));
    // Asking the peer to delay its ACKs lets many of them ride on its next datagram instead
    // of a packet of their own (quinn grants at most max(RTT, 25 ms), so on short links some
    // still go alone). Datagrams are never retransmitted, so a later ACK costs nothing.
    let interval = Duration::from_millis(cfg.probe_interval_ms);
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(10u32.into())
        .max_ack_delay(Some((interval * 3 / 2).min(Duration::from_millis(500))));
    t.ack_frequency_config(Some(ack));
    Ok(Arc::new(t))
}

/// Bytes in the connection IDs this prober issues (quinn's default is 8).
///
/// Every packet a peer sends here carries one, and a probe datagram is only some 80 bytes on
/// the wire: four bytes fewer each way is 5% of the probing budget, on every link. Four random
/// bytes tell this endpoint's few dozen connections apart (quinn draws again on a clash), and
/// each is fresh from the thread's CSPRNG, so an observer cannot link one to another (RFC 9000,
/// section 5.1). Zero bytes would save four more, but connections would then be told apart by
/// the peer's address alone, and the two sites of a pair may each dial the other from the same
/// address and port.
pub const CID_LEN: usize = 4;

/// Issues random [`CID_LEN`]-byte connection IDs.
#[derive(Debug, Clone, Copy)]
struct ShortCids;

impl quinn::ConnectionIdGenerator for ShortCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        quinn::ConnectionId::new(&rand::random::<[u8; CID_LEN]>())
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Starts a prober: binds the endpoint and the HTTP server, spawns one task per peer.
pub async fn start(cfg: ProberConfig) -> Result<ProberHandle, ProberError> {
    let (me, peer_ids) = cfg.validate()?;
    let (server, client) = quic_configs(&cfg)?;
    let socket = std::net::UdpSocket::bind(cfg.listen).map_err(|e| ProberError::io("bind QUIC", e))?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| ProberError::io("QUIC runtime", "no tokio runtime"))?;
    let mut endpoint_cfg = quinn::EndpointConfig::default();
    endpoint_cfg.cid_generator(|| Box::new(ShortCids));
    let endpoint = quinn::Endpoint::new(endpoint_cfg, Some(server), socket, runtime)
        .map_err(|e| ProberError::io("QUIC endpoint", e))?;
    let local_addr = endpoint
        .local_addr()
        .map_err(|e| ProberError::io("QUIC address", e))?;

    let metrics = Metrics::new();
    let (outputs, _) = broadcast::channel(65_536);
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let metrics_addr = match cfg.metrics_listen {
        Some(addr) => Some(
            crate::http::serve(
                addr,
                metrics.clone(),
                !cfg.report.endpoints.is_empty(),
                cancel.clone(),
                &mut tasks,
            )
            .await?,
        ),
        None => None,
    };

    distinct_tags(&peer_ids)?;
    let shared = Arc::new(Shared {
        me: me.clone(),
        peers: Mutex::new(HashMap::new()),
        session: cfg.session(),
        cfg: cfg.clone(),
        endpoint: endpoint.clone(),
        client: Mutex::new(client),
        metrics: metrics.clone(),
        outputs: outputs.clone(),
        clock: Clock::new(),
        burst_slots: BurstSlots::for_peers(cfg.burst.max_share, cfg.peers.len()),
        asks: Arc::new(EvidenceAsks::new(std::iter::empty())),
    });
    tasks.spawn(accept(shared.clone(), cancel.clone()));
    metrics.tls.observe(&cfg.tls);
    {
        let (endpoint, shared, cfg, stop) = (endpoint.clone(), shared.clone(), cfg.clone(), cancel.clone());
        tasks.spawn(async move {
            let load = || install_tls(&endpoint, &shared, &cfg).map_err(|e| e.to_string());
            tokio::select! {
                () = ops::tls::watch(cfg.tls.clone(), shared.metrics.tls.clone(), load) => {}
                () = stop.cancelled() => {}
            }
        });
    }
    if !cfg.report.endpoints.is_empty() {
        tasks.spawn(crate::report::run(
            cfg.report.clone(),
            cfg.tls.clone(),
            me.clone(),
            outputs.subscribe(),
            metrics.clone(),
            shared.asks.clone(),
            cancel.clone(),
        ));
    }
    info!(site = %me, addr = %local_addr, peers = cfg.peers.len(), "prober started");
    let peers: Vec<(SiteId, SocketAddr)> = peer_ids
        .into_iter()
        .zip(cfg.peers.iter().map(|p| p.addr))
        .collect();
    let mut handle = ProberHandle {
        local_addr,
        metrics_addr,
        metrics,
        outputs,
        cancel,
        tasks,
        endpoint,
        shared,
        cfg,
    };
    handle.metrics.peers.set(peers.len() as i64);
    for (id, addr) in peers {
        handle.spawn_peer(id, addr);
    }
    Ok(handle)
}

async fn accept(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            incoming = shared.endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if handshakes.len() >= MAX_INCOMING {
                    shared.drop_datagram("connection_limit");
                    incoming.refuse();
                    continue;
                }
                handshakes.spawn(identify(shared.clone(), incoming, cancel.clone()));
            }
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
        }
    }
    handshakes.shutdown().await;
}

/// Completes an incoming connection and learns which site it is from its first valid
/// datagram: the tag must name a site the certificate proves. A configured peer's task takes
/// the connection over; any other site is answered here, without windows.
async fn identify(shared: Arc<Shared>, incoming: quinn::Incoming, cancel: CancellationToken) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "incoming handshake failed");
            shared.drop_datagram("handshake");
            return;
        }
    };
    let Some(names) = peer_cert(&conn).and_then(|c| proto::auth::Peer::from_cert(&c)) else {
        shared.drop_datagram("no_identity");
        return;
    };
    let deadline = tokio::time::Instant::now() + IDENTIFY_WITHIN;
    let (site, first) = loop {
        let bytes = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => {
                conn.close(0u32.into(), b"no valid datagram");
                return;
            }
            d = conn.read_datagram() => match d {
                Ok(b) => b,
                Err(_) => return,
            },
        };
        let d = match Datagram::decode(&bytes) {
            Ok(d) => d,
            Err(e) => {
                shared.drop_datagram(e.label());
                continue;
            }
        };
        match names.names.iter().find(|n| site_tag(n) == d.site) {
            Some(site) => match SiteId::new(site.clone()) {
                Ok(site) if site != shared.me => break (site, d),
                _ => shared.drop_datagram("identity"),
            },
            None => shared.drop_datagram("identity"),
        }
    };
    let canonical = site < shared.me;
    match shared.measuring(first.site, &site) {
        Some(inbox) => {
            // The task gone (shutting down) or busy with a flood of connections: drop it.
            let _ = inbox.try_send(Accepted {
                conn,
                first,
                canonical,
                session: None,
            });
        }
        None => run_peer(shared, site, Role::Answer { conn, first }, cancel).await,
    }
}

/// What a link task does.
enum Role {
    /// A configured peer: dial, ask, measure, report; take over connections it dials to us.
    Measure {
        addr: SocketAddr,
        inbox: mpsc::Receiver<Accepted>,
        demote: CancellationToken,
    },
    /// A site that probes us without being configured here: answer its asks on its
    /// connection until it closes.
    Answer {
        conn: quinn::Connection,
        first: Datagram,
    },
}

type Dialing = Pin<Box<dyn Future<Output = Result<quinn::Connection, String>> + Send>>;

fn dial(shared: &Shared, peer: &SiteId, addr: SocketAddr) -> Dialing {
    match shared.endpoint.connect_with(
        shared.client.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        addr,
        peer.as_str(),
    ) {
        Ok(connecting) => Box::pin(async move { connecting.await.map_err(|e| e.to_string()) }),
        Err(e) => {
            let e = e.to_string();
            Box::pin(async move { Err(e) })
        }
    }
}

/// The pair's connection, as one side sees it.
struct Link {
    conn: quinn::Connection,
    /// Dialled by the site whose id sorts first: the one both sides keep.
    canonical: bool,
    /// When a datagram last arrived on it (monotonic ns).
    heard_ns: u64,
}

/// Whether a newly up connection should replace the current one. Both sides apply the same
/// rule, so they converge on the same connection: the first site's dial wins, unless it has
/// gone quiet (a restarted peer dialling back finds the old one dead before QUIC's idle
/// timeout says so); between two of the same kind the newer wins.
fn replaces(current: &Link, new_canonical: bool, now_ns: u64, quiet_ns: u64) -> bool {
    match (current.canonical, new_canonical) {
        (false, true) => true,
        (true, false) => now_ns.saturating_sub(current.heard_ns) > quiet_ns,
        _ => true,
    }
}

async fn read(link: &Option<Link>) -> Result<Bytes, quinn::ConnectionError> {
    match link {
        Some(l) => l.conn.read_datagram().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a datagram is sent as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outgoing {
    /// A regular ask, on the probe timer.
    Ask,
    /// An ask sent because of a miss: a burst's, or asking again while suspect.
    ExtraAsk,
    /// Not an ask: the answer to the peer's ask, or a datagram for a backlog of its echoes.
    Answer,
}

/// Sends the session's next datagram on the link.
fn send(session: &mut PeerSession, link: &Option<Link>, out: &mut Vec<u8>, clock: Clock, kind: Outgoing) {
    let Some(link) = link else { return };
    let now = clock.now_ns();
    let d = match kind {
        Outgoing::Ask => session.next_datagram(now, true),
        Outgoing::ExtraAsk => session.next_extra_ask(now),
        Outgoing::Answer => session.next_datagram(now, false),
    };
    out.clear();
    d.encode(out);
    if let Err(e) = link.conn.send_datagram(Bytes::copy_from_slice(out)) {
        debug!(error = %e, "datagram not sent");
    }
}

/// One peer for the prober's whole life ([`Role::Measure`]), or one unlisted peer's
/// connection for its life ([`Role::Answer`]).
async fn run_peer(shared: Arc<Shared>, peer: SiteId, role: Role, cancel: CancellationToken) {
    let clock = shared.clock;
    let me = shared.me.clone();
    let label = [peer.as_str()];
    let peer_tag = site_tag(peer.as_str());
    let first_sorts_me = me < peer;
    let interval = Duration::from_millis(shared.cfg.probe_interval_ms);
    let window = Duration::from_millis(shared.cfg.window_ms);
    let grace = Duration::from_millis(shared.cfg.dial_grace_ms);
    let quiet_ns = 3 * interval.as_nanos() as u64 * 2;
    let (redial_min, redial_max) = (
        Duration::from_millis(shared.cfg.redial_min_ms),
        Duration::from_millis(shared.cfg.redial_max_ms),
    );
    let (mut measure, mut addr, mut inbox, demote, mut link, mut pending_first) = match role {
        Role::Measure { addr, inbox, demote } => (true, Some(addr), Some(inbox), Some(demote), None, None),
        Role::Answer { conn, first } => (
            false,
            None,
            None,
            None,
            Some(Link {
                conn,
                canonical: !first_sorts_me,
                heard_ns: clock.now_ns(),
            }),
            Some(first),
        ),
    };
    let start = tokio::time::Instant::now();
    // A random phase per peer spreads the asks of all peers over the interval: no bursts.
    let phase = Duration::from_nanos(rand::random_range(0..interval.as_nanos() as u64));
    let mut ask_tick = tokio::time::interval_at(start + phase, interval);
    ask_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // When the ask timer is due next. The select below reads datagrams before timers, so after
    // a stall of the host the echoes it held are read while the overdue timer waits; a
    // datagram read with the timer overdue marks the stall first (see `BurstSlots`).
    let mut ask_due = start + phase;
    let mut ticks: u64 = 0;
    // Evidence bursts (see `BurstConfig`): `extra` more asks per interval on a grid between
    // the regular ticks, ticking only while the session says a burst runs.
    let extra = shared.cfg.burst.extra;
    let step = interval / (extra + 1);
    let mut burst_tick = tokio::time::interval_at(start + phase + step, step.max(Duration::from_millis(1)));
    burst_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let on_regular_grid = |t: tokio::time::Instant| {
        let off = t.saturating_duration_since(start + phase).as_nanos() % interval.as_nanos().max(1);
        off < step.as_nanos() / 2 || interval.as_nanos() - off < step.as_nanos() / 2
    };
    // The controller's asks for evidence on this peer (see `EvidenceAsks`).
    let asked = shared.asks.flag(peer.as_str());
    let mut bursts_seen = 0;
    let mut heals_seen = 0;
    let mut asked_seen = 0;
    let mut deferred_seen = 0;
    let mut early_seen = 0;
    let mut across_stall_seen = 0;
    let mut downs_held_seen = 0;
    let mut window_tick = tokio::time::interval_at(start + window, window);
    window_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);

    let mut session = PeerSession::new(shared.session.clone(), me.as_str());
    if measure {
        session = session.with_burst_slots(shared.burst_slots.clone());
    }
    let mut refused_seen = crate::session::BurstsRefused::default();
    // The peer's counters exist from the start: a rate over them reads zero rather than
    // nothing, and an increase() sees their first event.
    let m = &shared.metrics;
    for (reason, _) in crate::session::BurstsRefused::default().by_reason() {
        m.bursts_refused.with_label_values(&[peer.as_str(), reason]);
    }
    for state in ["down", "up"] {
        m.liveness_events.with_label_values(&[peer.as_str(), state]);
    }
    for counter in [
        &m.bursts,
        &m.heal_bursts,
        &m.asked_bursts,
        &m.deferred_bursts,
        &m.lost_early,
        &m.rtt_across_stall,
        &m.downs_held,
        &m.dial_failures,
        &m.sent,
        &m.lost,
    ] {
        counter.with_label_values(&[peer.as_str()]);
    }
    if link.is_some() {
        session.connected();
    }
    let mut dialing: Option<Dialing> = None;
    let mut dial_at: Option<tokio::time::Instant> = match addr {
        Some(_) if first_sorts_me => Some(start),
        Some(_) => Some(start + grace),
        None => None,
    };
    let mut backoff = redial_min;
    // Whether the connection was up for the whole current window.
    let mut window_connected = false;
    let mut window_start = ops::unix_ms();
    let mut out = Vec::with_capacity(MAX_PROBE);
    let deadline_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(deadline_timer);
    // Created once: a fresh cancellation future per wake-up would register a waiter each time.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    let demoted = async {
        match &demote {
            Some(d) => d.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(demoted);
    let mut armed_for: Option<u64> = None;
    // When the deadline timer was last armed (a deadline already past when armed is due then).
    let mut armed_at = 0;
    // Asks again every half interval while the last ask is missing (see `PeerSession::suspect`).
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut misses_seen = 0;

    loop {
        // The session's counters, carried to the peer's metrics as they grow.
        let carry = |counter: &prometheus::IntCounterVec, now: u64, seen: &mut u64| {
            if now != *seen {
                // A session taken over from an answering task may have counted less.
                counter
                    .with_label_values(&label)
                    .inc_by(now.saturating_sub(*seen));
                *seen = now;
            }
        };
        carry(&shared.metrics.bursts, session.bursts(), &mut bursts_seen);
        carry(
            &shared.metrics.heal_bursts,
            session.heal_bursts(),
            &mut heals_seen,
        );
        carry(
            &shared.metrics.asked_bursts,
            session.asked_bursts(),
            &mut asked_seen,
        );
        carry(
            &shared.metrics.deferred_bursts,
            session.deferred_bursts(),
            &mut deferred_seen,
        );
        carry(&shared.metrics.lost_early, session.lost_early(), &mut early_seen);
        carry(
            &shared.metrics.rtt_across_stall,
            session.across_stall(),
            &mut across_stall_seen,
        );
        carry(
            &shared.metrics.downs_held,
            session.downs_held(),
            &mut downs_held_seen,
        );
        let refused = session.bursts_refused();
        if refused != refused_seen {
            let m = &shared.metrics.bursts_refused;
            for ((reason, now), (_, seen)) in refused.by_reason().into_iter().zip(refused_seen.by_reason()) {
                m.with_label_values(&[peer.as_str(), reason])
                    .inc_by(now.saturating_sub(seen));
            }
            refused_seen = refused;
        }
        // The controller asked for evidence on this link: a burst, if the session allows.
        if asked.as_ref().is_some_and(|f| f.take()) && measure && link.is_some() {
            session.ask_burst(clock.now_ns());
        }
        // A new miss: ask again at once, then every half interval until the verdict.
        if session.misses() != misses_seen {
            misses_seen = session.misses();
            if measure && session.suspect() {
                send(&mut session, &link, &mut out, clock, Outgoing::ExtraAsk);
                retry_at = Some(tokio::time::Instant::now() + interval / 2);
            }
        }
        // The first datagram of an accepted connection, read before the task had it.
        let arrived = pending_first.take();
        // One timer for the session's next deadline, re-armed only when the deadline moves:
        // re-registering a fresh timer on every wake-up costs more than the probing itself.
        let next = session.next_deadline();
        if next != armed_for {
            armed_for = next;
            armed_at = clock.now_ns();
            if let Some(ns) = next {
                let at =
                    tokio::time::Instant::now() + Duration::from_nanos(ns.saturating_sub(clock.now_ns()));
                deadline_timer.as_mut().reset(at);
            }
        }
        let datagram = if let Some(d) = arrived {
            Some(d)
        } else {
            tokio::select! {
                biased;
                _ = &mut cancelled => break,
                // A reload removed the peer: stop measuring, keep answering on the link.
                _ = &mut demoted, if measure => {
                    info!(site = %me, peer = %peer, "no longer measured; answering only");
                    measure = false;
                    (addr, inbox, dialing, dial_at, retry_at) = (None, None, None, None, None);
                    // The same session answers on: the peer sees no gap in sequence numbers.
                    session.leave_burst_slots();
                    if link.is_none() {
                        break;
                    }
                    None
                }
                r = async { match dialing.as_mut() { Some(d) => d.await, None => std::future::pending().await } } => {
                    dialing = None;
                    match r {
                        Ok(c) => {
                            let canonical = first_sorts_me;
                            let now = clock.now_ns();
                            if link.as_ref().is_some_and(|l| !replaces(l, canonical, now, quiet_ns)) {
                                c.close(SUPERSEDED.into(), b"superseded");
                            } else {
                                debug!(site = %me, peer = %peer, "connected");
                                if let Some(old) = link.replace(Link { conn: c, canonical, heard_ns: now }) {
                                    old.conn.close(SUPERSEDED.into(), b"superseded");
                                }
                                session.connected();
                                backoff = redial_min;
                            }
                        }
                        Err(e) => {
                            debug!(site = %me, peer = %peer, error = %e, "dial failed");
                            shared.metrics.dial_failures.with_label_values(&label).inc();
                            if link.is_none() {
                                let jitter = rand::random_range(0.5..1.0);
                                dial_at = Some(tokio::time::Instant::now() + backoff.mul_f64(jitter));
                                backoff = (backoff * 2).min(redial_max);
                            }
                        }
                    }
                    None
                }
                a = async { match inbox.as_mut() { Some(i) => i.recv().await, None => std::future::pending().await } } => {
                    let Some(Accepted { conn, first, canonical, session: carried }) = a else { continue };
                    let now = clock.now_ns();
                    if link.as_ref().is_some_and(|l| !replaces(l, canonical, now, quiet_ns)) {
                        conn.close(SUPERSEDED.into(), b"superseded");
                        None
                    } else {
                        debug!(site = %me, peer = %peer, "peer connected");
                        if let Some(old) = link.replace(Link { conn, canonical, heard_ns: now }) {
                            old.conn.close(SUPERSEDED.into(), b"superseded");
                        }
                        match carried {
                            // The answering task's session goes on: the connection is the same.
                            Some(carried) => {
                                session = *carried;
                                if measure {
                                    session = session.with_burst_slots(shared.burst_slots.clone());
                                }
                            }
                            None => session.connected(),
                        }
                        dial_at = None;
                        backoff = redial_min;
                        Some(first)
                    }
                }
                d = read(&link) => match d {
                    Ok(bytes) => match Datagram::decode(&bytes) {
                        Ok(d) => Some(d),
                        Err(e) => {
                            shared.drop_datagram(e.label());
                            None
                        }
                    },
                    Err(e) => {
                        let superseded = matches!(&e, quinn::ConnectionError::ApplicationClosed(c)
                            if c.error_code == SUPERSEDED.into());
                        link = None;
                        window_connected = false;
                        if !measure {
                            break;
                        }
                        if superseded {
                            // The peer keeps another connection of the pair, on its way here:
                            // no outage. Its arrival starts the session again.
                            debug!(site = %me, peer = %peer, "connection superseded");
                            dial_at = Some(tokio::time::Instant::now() + grace);
                        } else {
                            debug!(site = %me, peer = %peer, error = %e, "connection lost");
                            shared.metrics.peer_up.with_label_values(&label).set(0);
                            if let Some(ev) = session.connection_lost() {
                                shared.emit_liveness(&peer, ev, Cause::Connection);
                            }
                            let wait = if first_sorts_me { backoff } else { backoff.max(grace) };
                            dial_at = Some(tokio::time::Instant::now() + wait);
                            backoff = (backoff * 2).min(redial_max);
                        }
                        None
                    }
                },
                _ = sleep_until_opt(dial_at) => {
                    dial_at = None;
                    if link.is_none() && dialing.is_none() && let Some(addr) = addr {
                        dialing = Some(dial(&shared, &peer, addr));
                    }
                    None
                }
                _ = deadline_timer.as_mut(), if armed_for.is_some() => {
                    let now = clock.now_ns();
                    if let Some(due) = armed_for.take() {
                        shared.burst_slots.timer_fired(due.max(armed_at), now);
                    }
                    // A task that only answers says nothing of the peer's liveness (its asks
                    // from before a reload removed the peer may still time out).
                    if let Some(ev) = session.poll(now).filter(|_| measure) {
                        shared.metrics.peer_up.with_label_values(&label).set(0);
                        shared.emit_liveness(&peer, ev, Cause::Probes);
                    }
                    None
                }
                tick = ask_tick.tick(), if measure => {
                    ticks += 1;
                    // Skipped ticks are not made up: the next is due on the grid after now.
                    ask_due = tick + interval;
                    let now_i = tokio::time::Instant::now();
                    if ask_due <= now_i {
                        let behind = (now_i - tick).as_nanos() / interval.as_nanos().max(1);
                        ask_due = tick + interval * (behind as u32 + 1);
                    }
                    let late = tick.elapsed().as_nanos() as u64;
                    let now = clock.now_ns();
                    shared.burst_slots.timer_fired(now.saturating_sub(late), now);
                    match &link {
                        Some(_) if session.ask_due(ticks, clock.now_ns()) => {
                            shared.metrics.send_lateness.observe(tick.elapsed().as_secs_f64());
                            send(&mut session, &link, &mut out, clock, Outgoing::Ask);
                        }
                        Some(_) => {}
                        None if session.ever_connected() => session.unsendable(),
                        None => {}
                    }
                    None
                }
                _ = sleep_until_opt(retry_at) => {
                    retry_at = None;
                    if session.suspect() {
                        send(&mut session, &link, &mut out, clock, Outgoing::ExtraAsk);
                        retry_at = Some(tokio::time::Instant::now() + interval / 2);
                    }
                    None
                }
                tick = burst_tick.tick(), if measure && extra > 0 && link.is_some() && session.bursting(clock.now_ns()) => {
                    if !on_regular_grid(tick) {
                        send(&mut session, &link, &mut out, clock, Outgoing::ExtraAsk);
                    }
                    None
                }
                // Not a stall detector: every peer's window closes at the same instant, so
                // the last of them run late by the others' work, stall or none.
                _ = window_tick.tick() => {
                    // A verdict this poll reaches is the deadline timer's, come a tick early.
                    if let Some(ev) = session.poll(clock.now_ns()).filter(|_| measure) {
                        shared.metrics.peer_up.with_label_values(&label).set(0);
                        shared.emit_liveness(&peer, ev, Cause::Probes);
                    }
                    let report = session.close_window();
                    let end = ops::unix_ms();
                    if measure && session.ever_connected() {
                        shared.metrics.sent.with_label_values(&label).inc_by(u64::from(report.sent));
                        shared.metrics.lost.with_label_values(&label).inc_by(u64::from(report.lost));
                        shared.metrics.loss.with_label_values(&label).set(report.loss);
                        shared.metrics.jitter.with_label_values(&label).set(report.jitter_ms / 1e3);
                        shared.emit(Output::Window(PeerWindow {
                            peer: peer.clone(),
                            start_unix_ms: window_start,
                            end_unix_ms: end,
                            connected: window_connected && link.is_some(),
                            report,
                        }));
                    }
                    window_start = end;
                    window_connected = link.is_some();
                    None
                }
            }
        };
        let Some(d) = datagram else { continue };
        if d.site != peer_tag {
            shared.drop_datagram("identity");
            continue;
        }
        // Answering a site that a reload has since made a peer: its task takes the link over.
        if !measure
            && let Some(to) = shared.measuring(peer_tag, &peer)
            && let Some(l) = link.take()
        {
            debug!(site = %me, peer = %peer, "link handed to the peer's new task");
            let _ = to.try_send(Accepted {
                conn: l.conn,
                first: d,
                canonical: l.canonical,
                session: Some(Box::new(session)),
            });
            return;
        }
        let now = clock.now_ns();
        if measure {
            let overdue = tokio::time::Instant::now().saturating_duration_since(ask_due);
            if !overdue.is_zero() {
                shared
                    .burst_slots
                    .timer_fired(now.saturating_sub(overdue.as_nanos() as u64), now);
            }
        }
        if let Some(l) = link.as_mut() {
            l.heard_ns = now;
        }
        let mut up = None;
        let reply = session.on_datagram(&d, now, |o| match o {
            Ok(o) => {
                if let EchoKind::InTime { rtt_ns } = o.kind
                    && measure
                {
                    shared
                        .metrics
                        .rtt
                        .with_label_values(&label)
                        .observe(rtt_ns as f64 / 1e9);
                }
                if o.event.is_some() {
                    up = o.event;
                }
            }
            Err(r) => shared.drop_datagram(r.label()),
        });
        match reply {
            Ok(Reply::Answer) => {
                send(&mut session, &link, &mut out, clock, Outgoing::Answer);
                shared.metrics.answered.inc();
            }
            Ok(Reply::Echoes) => {
                send(&mut session, &link, &mut out, clock, Outgoing::Answer);
                shared.metrics.echo_flushes.inc();
            }
            Ok(Reply::Wait) => {}
            Err(r) => shared.drop_datagram(r.label()),
        }
        if measure {
            if session.is_connected() && !session.is_down() {
                shared.metrics.peer_up.with_label_values(&label).set(1);
            }
            if let Some(ev) = up {
                shared.emit_liveness(&peer, ev, Cause::Probes);
            }
        }
    }
    if let Some(l) = link {
        let st = l.conn.stats();
        debug!(site = %me, peer = %peer, udp_tx = st.udp_tx.datagrams, udp_tx_bytes = st.udp_tx.bytes,
            udp_rx = st.udp_rx.datagrams, acks_tx = st.frame_tx.acks, datagrams_tx = st.frame_tx.datagram,
            pings_tx = st.frame_tx.ping, "connection closed");
        l.conn.close(0u32.into(), b"shutdown");
    }
}
