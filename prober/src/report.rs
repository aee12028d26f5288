//! The report stream: windows and liveness events to the controller, nothing lost while it is
//! merely away.
//!
//! Every output gets a sequence number (per prober instance) and waits in a bounded buffer
//! until a controller acknowledges it; on reconnect everything unacknowledged is sent again and
//! the controller drops what it already has by `(instance, seq)`. When the buffer is full the
//! oldest report goes first and is counted. Endpoints are tried in order with back-off; a
//! controller that is not the leader answers with a hint, which is followed at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::v1::probe_ingest_client::ProbeIngestClient;
use proto::v1::{self as pb, probe_report, prober_message};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use topology::SiteId;
use tracing::{debug, info};

use crate::config::ReportConfig;
use crate::daemon::{Output, PeerLiveness, PeerWindow};
use crate::liveness::LivenessEvent;
use crate::metrics::Metrics;
use crate::tls::TlsFiles;

/// The controller's asks for evidence bursts (`ReportAck.evidence_wanted`), by peer: the
/// report stream raises a peer's flag, and the peer's task takes it at its next wake-up,
/// within a probe interval, and asks its session for a burst (`PeerSession::ask_burst`).
#[derive(Debug, Default)]
pub struct EvidenceAsks(Mutex<HashMap<String, Arc<AskFlag>>>);

/// One peer's flag in [`EvidenceAsks`], held by the peer's task: taken on every wake-up,
/// so it is one atomic swap, with no lookup by name.
#[derive(Debug, Default)]
pub struct AskFlag(AtomicBool);

impl AskFlag {
    /// Lowers the flag; whether it was raised.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

impl EvidenceAsks {
    /// Flags for these peers, all down.
    pub fn new<'a>(peers: impl IntoIterator<Item = &'a str>) -> Self {
        EvidenceAsks(Mutex::new(
            peers
                .into_iter()
                .map(|p| (p.to_string(), Arc::default()))
                .collect(),
        ))
    }

    fn flags(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AskFlag>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Raises `peer`'s flag; false when `peer` is not one of this prober's peers.
    pub fn ask(&self, peer: &str) -> bool {
        self.flags()
            .get(peer)
            .map(|f| f.0.store(true, Ordering::Relaxed))
            .is_some()
    }

    /// `peer`'s flag, for its task; `None` when `peer` is not one of this prober's peers.
    pub fn flag(&self, peer: &str) -> Option<Arc<AskFlag>> {
        self.flags().get(peer).cloned()
    }

    /// A peer added by a reload: its flag, down.
    pub fn add(&self, peer: &str) {
        self.flags().entry(peer.to_string()).or_default();
    }

    /// A peer removed by a reload: the controller's asks for it are refused from now on.
    pub fn remove(&self, peer: &str) {
        self.flags().remove(peer);
    }
}

/// Converts one output to its wire form.
pub fn to_wire(me: &SiteId, o: &Output) -> probe_report::Body {
    match o {
        Output::Window(PeerWindow {
            peer,
            start_unix_ms,
            end_unix_ms,
            connected,
            report: r,
        }) => probe_report::Body::Window(pb::LinkWindow {
            from: me.to_string(),
            to: peer.to_string(),
            start_unix_ms: *start_unix_ms,
            end_unix_ms: *end_unix_ms,
            sent: r.sent,
            received: r.received,
            lost: r.lost,
            late: r.late,
            reordered: r.reordered,
            duplicates: r.duplicates,
            rtt_min_ms: r.rtt_ms[0],
            rtt_p50_ms: r.rtt_ms[1],
            rtt_p90_ms: r.rtt_ms[2],
            rtt_p99_ms: r.rtt_ms[3],
            rtt_max_ms: r.rtt_ms[4],
            jitter_ms: r.jitter_ms,
            loss_ratio: r.loss,
            loss_ci_low: r.loss_ci.0,
            loss_ci_high: r.loss_ci.1,
            connected: *connected,
        }),
        Output::Liveness(PeerLiveness {
            peer,
            event,
            at_unix_ms,
            cause,
        }) => probe_report::Body::Liveness(pb::LivenessEvent {
            from: me.to_string(),
            to: peer.to_string(),
            state: match event {
                LivenessEvent::Down => pb::LinkLiveness::Down,
                LivenessEvent::Up => pb::LinkLiveness::Up,
            } as i32,
            at_unix_ms: *at_unix_ms,
            cause: cause.as_str().to_string(),
        }),
    }
}

/// Reports waiting for an acknowledgement: contiguous sequence numbers, oldest first.
#[derive(Debug)]
pub struct ReportBuffer {
    items: VecDeque<pb::ProbeReport>,
    cap: usize,
    next_seq: u64,
    dropped: u64,
}

impl ReportBuffer {
    /// An empty buffer holding at most `cap` reports.
    pub fn new(cap: usize) -> Self {
        ReportBuffer {
            items: VecDeque::new(),
            cap: cap.max(1),
            next_seq: 1,
            dropped: 0,
        }
    }

    /// Adds a report, numbering it; drops the oldest when full (returns how many were dropped).
    pub fn push(&mut self, body: probe_report::Body) -> u64 {
        let mut dropped = 0;
        while self.items.len() >= self.cap {
            self.items.pop_front();
            dropped += 1;
        }
        self.dropped += dropped;
        self.items.push_back(pb::ProbeReport {
            seq: self.next_seq,
            body: Some(body),
        });
        self.next_seq += 1;
        dropped
    }

    /// Forgets everything up to `seq`; returns how many were acknowledged.
    pub fn ack(&mut self, seq: u64) -> u64 {
        let mut n = 0;
        while self.items.front().is_some_and(|r| r.seq <= seq) {
            self.items.pop_front();
            n += 1;
        }
        n
    }

    /// The first report with a sequence number above `seq`.
    pub fn after(&self, seq: u64) -> Option<&pb::ProbeReport> {
        let first = self.items.front()?.seq;
        let i = seq.saturating_add(1).saturating_sub(first);
        self.items.get(usize::try_from(i).ok()?)
    }

    /// Reports waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Reports dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Runs the report stream until `cancel`.
pub async fn run(
    cfg: ReportConfig,
    tls: TlsFiles,
    me: SiteId,
    mut rx: broadcast::Receiver<Output>,
    metrics: Metrics,
    asks: Arc<EvidenceAsks>,
    cancel: CancellationToken,
) {
    let instance: u64 = rand::random();
    let mut buf = ReportBuffer::new(cfg.buffer);
    let (min, max) = (
        Duration::from_millis(cfg.backoff_min_ms),
        Duration::from_millis(cfg.backoff_max_ms),
    );
    let mut backoff = min;
    let mut next = 0usize;
    let mut hint: Option<String> = None;

    // Takes one output into the buffer; false when the prober is gone.
    let take = |r: Result<Output, broadcast::error::RecvError>, buf: &mut ReportBuffer| -> bool {
        match r {
            Ok(o) => {
                metrics.report_dropped.inc_by(buf.push(to_wire(&me, &o)));
            }
            Err(broadcast::error::RecvError::Lagged(n)) => metrics.report_dropped.inc_by(n),
            Err(broadcast::error::RecvError::Closed) => return false,
        }
        metrics.report_buffered.set(buf.len() as i64);
        true
    };

    'outer: loop {
        let endpoint = hint.take().unwrap_or_else(|| {
            let e = cfg.endpoints[next % cfg.endpoints.len()].clone();
            next += 1;
            e
        });
        let stream = connect(&endpoint, &tls, &me, instance);
        tokio::pin!(stream);
        let opened = loop {
            tokio::select! {
                _ = cancel.cancelled() => break 'outer,
                r = rx.recv() => if !take(r, &mut buf) { break 'outer },
                s = &mut stream => break s,
            }
        };
        if let Ok((tx, mut inbound)) = opened {
            info!(site = %me, controller = %endpoint, backlog = buf.len(), "report stream open");
            metrics.controller_connected.set(1.0);
            backoff = min;
            let mut sent_through = 0u64;
            loop {
                let unsent = buf.after(sent_through).is_some();
                tokio::select! {
                    _ = cancel.cancelled() => break 'outer,
                    r = rx.recv() => if !take(r, &mut buf) { break 'outer },
                    permit = tx.reserve(), if unsent => match permit {
                        Ok(p) => {
                            if let Some(r) = buf.after(sent_through) {
                                sent_through = r.seq;
                                p.send(pb::ProberMessage { body: Some(prober_message::Body::Report(r.clone())) });
                            }
                        }
                        Err(_) => break,
                    },
                    a = inbound.message() => match a {
                        Ok(Some(ack)) => {
                            metrics.report_acked.inc_by(buf.ack(ack.acked_through));
                            metrics.report_buffered.set(buf.len() as i64);
                            for peer in &ack.evidence_wanted {
                                if !asks.ask(peer) {
                                    debug!(site = %me, peer = %peer, "evidence asked for a site that is not a peer");
                                }
                            }
                            if !ack.leader_hint.is_empty() && ack.leader_hint != endpoint {
                                info!(site = %me, leader = %ack.leader_hint, "following the leader hint");
                                hint = Some(ack.leader_hint);
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            debug!(site = %me, controller = %endpoint, error = %e, "report stream ended");
                            break;
                        }
                    },
                }
            }
            metrics.controller_connected.set(0.0);
        } else if let Err(e) = opened {
            debug!(site = %me, controller = %endpoint, error = %e, "controller unreachable");
        }
        if hint.is_some() {
            continue;
        }
        let wake = tokio::time::sleep(backoff.mul_f64(rand::random_range(0.5..1.0)));
        tokio::pin!(wake);
        backoff = (backoff * 2).min(max);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break 'outer,
                r = rx.recv() => if !take(r, &mut buf) { break 'outer },
                _ = &mut wake => break,
            }
        }
    }
    metrics.controller_connected.set(0.0);
}

type Opened = (mpsc::Sender<pb::ProberMessage>, tonic::Streaming<pb::ReportAck>);

async fn connect(endpoint: &str, tls: &TlsFiles, me: &SiteId, instance: u64) -> Result<Opened, String> {
    // An https:// controller is dialled with this prober's own certificate (prober role).
    let tls = endpoint.starts_with("https://").then_some(tls);
    let ep = proto::auth::endpoint(endpoint, tls)?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    let channel = ep.connect().await.map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(1_024);
    let hello = pb::ProberHello {
        site: me.to_string(),
        instance,
        software: env!("CARGO_PKG_VERSION").to_string(),
    };
    tx.send(pb::ProberMessage {
        body: Some(prober_message::Body::Hello(hello)),
    })
    .await
    .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        ProbeIngestClient::new(channel).report(ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| "no answer within 5 s".to_string())?
    .map_err(|e| e.to_string())?;
    Ok((tx, response.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(n: u32) -> probe_report::Body {
        probe_report::Body::Window(pb::LinkWindow {
            sent: n,
            ..Default::default()
        })
    }

    #[test]
    fn an_ask_for_evidence_is_taken_once_and_only_for_a_peer() {
        let asks = EvidenceAsks::new(["b", "c"]);
        let (b, c) = (asks.flag("b").unwrap(), asks.flag("c").unwrap());
        assert!(asks.flag("zz").is_none(), "not a peer");
        assert!(!b.take());
        assert!(asks.ask("b"));
        assert!(asks.ask("b"), "asked twice before the peer's task woke");
        assert!(!asks.ask("zz"), "not a peer");
        assert!(!c.take());
        assert!(b.take());
        assert!(!b.take(), "taken once");
    }

    #[test]
    fn the_buffer_numbers_acks_and_drops_the_oldest_first() {
        let mut b = ReportBuffer::new(3);
        for i in 0..5 {
            b.push(body(i));
        }
        assert_eq!(b.dropped(), 2);
        assert_eq!(b.after(0).map(|r| r.seq), Some(3), "1 and 2 were dropped");
        assert_eq!(b.after(3).map(|r| r.seq), Some(4));
        assert_eq!(b.ack(4), 2);
        assert_eq!(b.len(), 1);
        assert_eq!(b.after(4).map(|r| r.seq), Some(5));
        assert!(b.after(5).is_none());
        assert_eq!(b.ack(100), 1);
        assert!(b.is_empty());
    }
}
