//! The async shell: a quinn endpoint that probes every peer and reflects every peer's probes.
//!
//! One task per peer owns that peer's [`PeerSession`] and its outgoing connection (dialled with
//! back-off); it sends probes on a jittered 10 Hz timer, feeds replies to the session, polls it
//! at its next deadline and closes a window every `window_ms`. Incoming connections are
//! reflectors: each probe is checked (format, and that its sender site is the site the peer's
//! certificate names) and sent straight back. Everything the tasks learn leaves as [`Output`]
//! on a broadcast channel that the report stream, the lab and the tests subscribe to.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use topology::SiteId;
use tracing::{debug, info};

use crate::config::{PeerConfig, ProberConfig};
use crate::error::ProberError;
use crate::liveness::LivenessEvent;
use crate::metrics::Metrics;
use crate::session::{PeerSession, SessionConfig};
use crate::tls::{TlsMaterial, cert_names_site, peer_cert};
use crate::window::WindowReport;
use crate::wire::{Kind, MAX_PROBE, Probe};

/// Incoming connections beyond this are refused: a mesh has far fewer peers.
const MAX_INCOMING: usize = 4_096;

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

struct Shared {
    me: SiteId,
    cfg: ProberConfig,
    session: SessionConfig,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    metrics: Metrics,
    outputs: broadcast::Sender<Output>,
    clock: Clock,
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

    /// Resolves when the prober is asked to stop.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }
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
    t.datagram_receive_buffer_size(Some(256 * 1024));
    // Every reply would otherwise be acknowledged by a packet of its own 25 ms later (the
    // default ACK delay is shorter than the probe interval). Asking the peer to wait a little
    // longer than one interval lets each ACK ride on the next probe: about a third fewer
    // packets on the wire. Datagrams are never retransmitted, so a later ACK costs nothing.
    let interval = Duration::from_millis(cfg.probe_interval_ms);
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(10u32.into())
        .max_ack_delay(Some((interval * 3 / 2).min(Duration::from_millis(500))));
    t.ack_frequency_config(Some(ack));
    Ok(Arc::new(t))
}

/// Starts a prober: binds the endpoint and the HTTP server, spawns one task per peer.
pub async fn start(cfg: ProberConfig) -> Result<ProberHandle, ProberError> {
    let (me, peer_ids) = cfg.validate()?;
    let tls = TlsMaterial::load(&cfg.tls)?;
    let transport = transport(&cfg)?;
    let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls.server.clone())
        .map_err(|e| ProberError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls.client.clone())
        .map_err(|e| ProberError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    let endpoint =
        quinn::Endpoint::server(server, cfg.listen).map_err(|e| ProberError::io("bind QUIC", e))?;
    let local_addr = endpoint
        .local_addr()
        .map_err(|e| ProberError::io("QUIC address", e))?;

    let metrics = Metrics::new();
    let (outputs, _) = broadcast::channel(65_536);
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();

    let metrics_addr = match cfg.metrics_listen {
        Some(addr) => Some(crate::http::serve(addr, metrics.clone(), cancel.clone(), &mut tasks).await?),
        None => None,
    };

    let shared = Arc::new(Shared {
        me: me.clone(),
        session: cfg.session(),
        cfg: cfg.clone(),
        endpoint: endpoint.clone(),
        client,
        metrics: metrics.clone(),
        outputs: outputs.clone(),
        clock: Clock::new(),
    });
    for (p, id) in cfg.peers.iter().zip(peer_ids) {
        shared.metrics.peer_up.with_label_values(&[id.as_str()]).set(0);
        tasks.spawn(run_peer(shared.clone(), id, p.clone(), cancel.clone()));
    }
    tasks.spawn(accept(shared.clone(), cancel.clone()));
    if !cfg.report.endpoints.is_empty() {
        tasks.spawn(crate::report::run(
            cfg.report.clone(),
            cfg.tls.clone(),
            me.clone(),
            outputs.subscribe(),
            metrics.clone(),
            cancel.clone(),
        ));
    }
    info!(site = %me, addr = %local_addr, peers = cfg.peers.len(), "prober started");
    Ok(ProberHandle {
        local_addr,
        metrics_addr,
        metrics,
        outputs,
        cancel,
        tasks,
        endpoint,
    })
}

async fn accept(shared: Arc<Shared>, cancel: CancellationToken) {
    let mut reflectors = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            incoming = shared.endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if reflectors.len() >= MAX_INCOMING {
                    shared.drop_datagram("connection_limit");
                    incoming.refuse();
                    continue;
                }
                reflectors.spawn(reflect(shared.clone(), incoming, cancel.clone()));
            }
            Some(_) = reflectors.join_next(), if !reflectors.is_empty() => {}
        }
    }
    reflectors.shutdown().await;
}

/// Serves one incoming connection: reflects the probes of the site its certificate names.
async fn reflect(shared: Arc<Shared>, incoming: quinn::Incoming, cancel: CancellationToken) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "incoming handshake failed");
            shared.drop_datagram("handshake");
            return;
        }
    };
    let Some(cert) = peer_cert(&conn) else {
        shared.drop_datagram("no_identity");
        return;
    };
    // The site this connection proved to be, learnt from its first probe that the cert names.
    let mut peer: Option<SiteId> = None;
    let mut out = Vec::with_capacity(MAX_PROBE);
    loop {
        let bytes = tokio::select! {
            _ = cancel.cancelled() => break,
            d = conn.read_datagram() => match d {
                Ok(b) => b,
                Err(_) => break,
            },
        };
        let probe = match Probe::decode(&bytes) {
            Ok(p) => p,
            Err(e) => {
                shared.drop_datagram(e.label());
                continue;
            }
        };
        if probe.kind != Kind::Probe {
            shared.drop_datagram("unexpected_reply");
            continue;
        }
        let proven = match &peer {
            Some(site) => *site == probe.site,
            None => {
                let ok = cert_names_site(&cert, probe.site.as_str());
                if ok {
                    peer = Some(probe.site.clone());
                }
                ok
            }
        };
        if !proven {
            shared.drop_datagram("identity");
            continue;
        }
        out.clear();
        probe.reflect().encode(&mut out);
        if conn.send_datagram(Bytes::copy_from_slice(&out)).is_ok() {
            shared.metrics.reflected.inc();
        }
    }
}

type Dialing = Pin<Box<dyn Future<Output = Result<quinn::Connection, String>> + Send>>;

fn dial(shared: &Shared, peer: &SiteId, addr: SocketAddr) -> Dialing {
    match shared
        .endpoint
        .connect_with(shared.client.clone(), addr, peer.as_str())
    {
        Ok(connecting) => Box::pin(async move { connecting.await.map_err(|e| e.to_string()) }),
        Err(e) => {
            let e = e.to_string();
            Box::pin(async move { Err(e) })
        }
    }
}

/// Sends the session's next probe on `conn`.
fn send_probe(
    session: &mut PeerSession,
    conn: &quinn::Connection,
    out: &mut Vec<u8>,
    clock: Clock,
    me: &SiteId,
    peer: &SiteId,
) {
    let p = session.next_probe(clock.now_ns());
    out.clear();
    p.encode(out);
    if let Err(e) = conn.send_datagram(Bytes::copy_from_slice(out)) {
        debug!(site = %me, peer = %peer, error = %e, "probe not sent");
    }
}

async fn read(conn: &Option<quinn::Connection>) -> Result<Bytes, quinn::ConnectionError> {
    match conn {
        Some(c) => c.read_datagram().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Probes one peer for the prober's whole life.
async fn run_peer(shared: Arc<Shared>, peer: SiteId, cfg: PeerConfig, cancel: CancellationToken) {
    let clock = shared.clock;
    let me = shared.me.clone();
    let label = [peer.as_str()];
    let interval = Duration::from_millis(shared.cfg.probe_interval_ms);
    let window = Duration::from_millis(shared.cfg.window_ms);
    let (redial_min, redial_max) = (
        Duration::from_millis(shared.cfg.redial_min_ms),
        Duration::from_millis(shared.cfg.redial_max_ms),
    );
    let start = tokio::time::Instant::now();
    // A random phase per peer spreads the probes of all peers over the interval: no bursts.
    let phase = Duration::from_nanos(rand::random_range(0..interval.as_nanos() as u64));
    let mut probe_tick = tokio::time::interval_at(start + phase, interval);
    probe_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    // Evidence bursts (see `BurstConfig`): `extra` more probes per interval on a grid between
    // the regular ticks, ticking only while the session says a burst runs.
    let extra = shared.cfg.burst.extra;
    let step = interval / (extra + 1);
    let mut burst_tick = tokio::time::interval_at(start + phase + step, step.max(Duration::from_millis(1)));
    burst_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let on_regular_grid = |t: tokio::time::Instant| {
        let off = t.saturating_duration_since(start + phase).as_nanos() % interval.as_nanos().max(1);
        off < step.as_nanos() / 2 || interval.as_nanos() - off < step.as_nanos() / 2
    };
    let mut bursts_seen = 0;
    let mut window_tick = tokio::time::interval_at(start + window, window);
    window_tick.set_missed_tick_behavior(MissedTickBehavior::Skip);

    let mut session = PeerSession::new(shared.session.clone(), me.clone(), rand::random());
    let mut conn: Option<quinn::Connection> = None;
    let mut dialing: Option<Dialing> = Some(dial(&shared, &peer, cfg.addr));
    let mut redial_at: Option<tokio::time::Instant> = None;
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
    let mut armed_for: Option<u64> = None;

    loop {
        if session.bursts() != bursts_seen {
            shared
                .metrics
                .bursts
                .with_label_values(&label)
                .inc_by(session.bursts() - bursts_seen);
            bursts_seen = session.bursts();
        }
        // One timer for the session's next deadline, re-armed only when the deadline moves:
        // re-registering a fresh timer on every wake-up costs more than the probing itself.
        let next = session.next_deadline();
        if next != armed_for {
            armed_for = next;
            if let Some(ns) = next {
                let at =
                    tokio::time::Instant::now() + Duration::from_nanos(ns.saturating_sub(clock.now_ns()));
                deadline_timer.as_mut().reset(at);
            }
        }
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            r = async { match dialing.as_mut() { Some(d) => d.await, None => std::future::pending().await } } => {
                dialing = None;
                match r {
                    Ok(c) => {
                        debug!(site = %me, peer = %peer, "connected");
                        conn = Some(c);
                        session.reconnected(rand::random());
                        backoff = redial_min;
                        shared.metrics.peer_up.with_label_values(&label).set(1);
                    }
                    Err(e) => {
                        debug!(site = %me, peer = %peer, error = %e, "dial failed");
                        shared.metrics.dial_failures.with_label_values(&label).inc();
                        let jitter = rand::random_range(0.5..1.0);
                        redial_at = Some(tokio::time::Instant::now() + backoff.mul_f64(jitter));
                        backoff = (backoff * 2).min(redial_max);
                    }
                }
            }
            d = read(&conn) => match d {
                Ok(bytes) => {
                    let now = clock.now_ns();
                    match Probe::decode(&bytes) {
                        Ok(p) if p.kind == Kind::Reply => {
                            if p.site != me {
                                shared.drop_datagram("site_mismatch");
                                continue;
                            }
                            match session.on_reply(&p, now) {
                                Ok(o) => {
                                    if let crate::session::ReplyKind::InTime { rtt_ns } = o.kind {
                                        shared.metrics.rtt.with_label_values(&label).observe(rtt_ns as f64 / 1e9);
                                    }
                                    if let Some(ev) = o.event {
                                        shared.metrics.peer_up.with_label_values(&label).set(1);
                                        shared.emit_liveness(&peer, ev, Cause::Probes);
                                    }
                                }
                                Err(r) => shared.drop_datagram(r.label()),
                            }
                        }
                        Ok(p) => {
                            // A peer probing over our connection: reflect it like any other.
                            out.clear();
                            p.reflect().encode(&mut out);
                            if let Some(c) = &conn
                                && c.send_datagram(Bytes::copy_from_slice(&out)).is_ok()
                            {
                                shared.metrics.reflected.inc();
                            }
                        }
                        Err(e) => shared.drop_datagram(e.label()),
                    }
                }
                Err(e) => {
                    debug!(site = %me, peer = %peer, error = %e, "connection lost");
                    conn = None;
                    window_connected = false;
                    shared.metrics.peer_up.with_label_values(&label).set(0);
                    if let Some(ev) = session.connection_lost() {
                        shared.emit_liveness(&peer, ev, Cause::Connection);
                    }
                    redial_at = Some(tokio::time::Instant::now() + backoff);
                    backoff = (backoff * 2).min(redial_max);
                }
            },
            _ = sleep_until_opt(redial_at) => {
                redial_at = None;
                dialing = Some(dial(&shared, &peer, cfg.addr));
            }
            _ = deadline_timer.as_mut(), if armed_for.is_some() => {
                armed_for = None;
                if let Some(ev) = session.poll(clock.now_ns()) {
                    shared.metrics.peer_up.with_label_values(&label).set(0);
                    shared.emit_liveness(&peer, ev, Cause::Probes);
                }
            }
            tick = probe_tick.tick() => {
                match &conn {
                    Some(c) => {
                        shared.metrics.send_lateness.observe(tick.elapsed().as_secs_f64());
                        send_probe(&mut session, c, &mut out, clock, &me, &peer);
                    }
                    None => session.unsendable(),
                }
            }
            tick = burst_tick.tick(), if extra > 0 && conn.is_some() && session.bursting(clock.now_ns()) => {
                if let Some(c) = &conn
                    && !on_regular_grid(tick)
                {
                    send_probe(&mut session, c, &mut out, clock, &me, &peer);
                }
            }
            _ = window_tick.tick() => {
                let _ = session.poll(clock.now_ns());
                let report = session.close_window();
                let end = ops::unix_ms();
                shared.metrics.sent.with_label_values(&label).inc_by(u64::from(report.sent));
                shared.metrics.lost.with_label_values(&label).inc_by(u64::from(report.lost));
                shared.metrics.loss.with_label_values(&label).set(report.loss);
                shared.metrics.jitter.with_label_values(&label).set(report.jitter_ms / 1e3);
                shared.emit(Output::Window(PeerWindow {
                    peer: peer.clone(),
                    start_unix_ms: window_start,
                    end_unix_ms: end,
                    connected: window_connected && conn.is_some(),
                    report,
                }));
                window_start = end;
                window_connected = conn.is_some();
            }
        }
    }
    if let Some(c) = conn {
        let st = c.stats();
        debug!(site = %me, peer = %peer, udp_tx = st.udp_tx.datagrams, udp_tx_bytes = st.udp_tx.bytes,
            udp_rx = st.udp_rx.datagrams, acks_tx = st.frame_tx.acks, ack_freq_tx = st.frame_tx.ack_frequency,
            datagrams_tx = st.frame_tx.datagram, pings_tx = st.frame_tx.ping, "connection closed");
        c.close(0u32.into(), b"shutdown");
    }
}
