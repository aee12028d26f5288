//! One peer's probing state, without I/O: what to send, what a reply means, when a probe is lost.
//!
//! The async shell calls [`PeerSession::next_probe`] on its timer, hands every reply to
//! [`PeerSession::on_reply`], calls [`PeerSession::poll`] at [`PeerSession::next_deadline`] and
//! closes a window every `window` with [`PeerSession::close_window`]. Time is always a parameter
//! (monotonic nanoseconds), so the whole state machine is tested with a simulated clock.
//!
//! Every probe sent stays in a ring indexed by sequence number until its fate is known and a
//! little longer, so a reply is classified in O(1): in time, late (after `loss_timeout`),
//! duplicate, reordered, or refused (never sent, or carrying another send time: forged or
//! replayed from an older session).

use std::collections::VecDeque;
use std::time::Duration;

use topology::SiteId;

use crate::liveness::{Liveness, LivenessConfig, LivenessEvent};
use crate::window::{Window, WindowReport};
use crate::wire::{Kind, Probe};

/// Per-peer probing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// A probe not answered within `max(loss_timeout, 3 × smoothed RTT)` is lost. Default 1 s.
    pub loss_timeout: Duration,
    /// Fast liveness settings (the probe interval lives there).
    pub liveness: LivenessConfig,
    /// Evidence bursts on a surprising miss.
    pub burst: BurstConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            loss_timeout: Duration::from_secs(1),
            liveness: LivenessConfig::default(),
            burst: BurstConfig::default(),
        }
    }
}

/// Evidence bursts: a miss on a link that rarely misses is the first sign of a brown-out,
/// and at 10 probes a second it takes five seconds or more to tell 5% loss from noise. For a
/// short while after such a miss the prober sends `extra` more probes per interval, so the
/// windows the controller judges carry several times the evidence and a brown-out is routed
/// around in seconds. A link that already misses often is known to be lossy and gets no burst,
/// so bursts cost almost nothing on clean links and stay bounded on lossy ones.
#[derive(Debug, Clone, PartialEq)]
pub struct BurstConfig {
    /// Extra probes per probe interval during a burst; 0 turns bursts off. Default 4 (five
    /// times the probe rate).
    pub extra: u32,
    /// How long a burst lasts. Default 2 s.
    pub duration: Duration,
    /// Least time between the starts of two bursts. Default 5 s.
    pub cooldown: Duration,
    /// Only a link whose miss rate is below this bursts. Default 0.005.
    pub below_miss_rate: f64,
}

impl Default for BurstConfig {
    fn default() -> Self {
        BurstConfig {
            extra: 4,
            duration: Duration::from_secs(2),
            cooldown: Duration::from_secs(5),
            below_miss_rate: 0.005,
        }
    }
}

/// Why a reply was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a reply (a probe must be reflected, not measured).
    NotReply,
    /// Another session's reply: a leftover of an older connection.
    StaleSession,
    /// A sequence number never sent.
    Unsent,
    /// Older than the history kept: cannot be classified.
    TooOld,
    /// The send time does not match what was sent under this sequence: forged or corrupted.
    Mismatch,
}

impl Refused {
    /// A short, stable label for the `reason` of a drop counter.
    pub fn label(self) -> &'static str {
        match self {
            Refused::NotReply => "not_reply",
            Refused::StaleSession => "stale_session",
            Refused::Unsent => "unsent",
            Refused::TooOld => "too_old",
            Refused::Mismatch => "mismatch",
        }
    }
}

/// What a reply turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// In time; its RTT was recorded.
    InTime {
        /// Round trip, ns.
        rtt_ns: u64,
    },
    /// After its loss timeout (already counted lost).
    Late,
    /// A second reply to the same probe.
    Duplicate,
}

/// The outcome of one accepted reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyOutcome {
    /// What the reply was.
    pub kind: ReplyKind,
    /// Whether it came after a newer one.
    pub reordered: bool,
    /// A liveness change it caused (`Up` after a `Down`).
    pub event: Option<LivenessEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Pending,
    Answered,
    Lost,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    sent_ns: u64,
    fate: Fate,
}

/// One peer's probing state for one connection session.
#[derive(Debug, Clone)]
pub struct PeerSession {
    cfg: SessionConfig,
    me: SiteId,
    session: u32,
    next_seq: u64,
    /// `ring[i]` is sequence `base + i`.
    ring: VecDeque<Slot>,
    base: u64,
    max_answered: Option<u64>,
    srtt_ns: Option<f64>,
    window: Window,
    liveness: Liveness,
    connected: bool,
    /// A burst runs until this instant (ns); 0 when none ever started.
    burst_until: u64,
    /// When the last burst started.
    burst_started: Option<u64>,
    /// Bursts started since this state was created.
    bursts: u64,
}

impl PeerSession {
    /// A fresh state for probes from `me`; `session` must be random per connection.
    pub fn new(cfg: SessionConfig, me: SiteId, session: u32) -> Self {
        let liveness = Liveness::new(cfg.liveness.clone());
        PeerSession {
            cfg,
            me,
            session,
            next_seq: 0,
            ring: VecDeque::new(),
            base: 0,
            max_answered: None,
            srtt_ns: None,
            window: Window::default(),
            liveness,
            connected: true,
            burst_until: 0,
            burst_started: None,
            bursts: 0,
        }
    }

    /// The session number replies must carry.
    pub fn session(&self) -> u32 {
        self.session
    }

    /// Whether liveness currently says down.
    pub fn is_down(&self) -> bool {
        self.liveness.is_down()
    }

    /// The loss timeout in force: the configured one, or three smoothed RTTs if longer.
    pub fn loss_timeout(&self) -> Duration {
        let three_rtt = Duration::from_nanos(self.srtt_ns.map_or(0, |s| (3.0 * s) as u64));
        self.cfg.loss_timeout.max(three_rtt)
    }

    /// The next probe to send at `now`; it is recorded as sent.
    pub fn next_probe(&mut self, now: u64) -> Probe {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.ring.is_empty() {
            self.base = seq;
        }
        self.ring.push_back(Slot {
            sent_ns: now,
            fate: Fate::Pending,
        });
        self.window.sent();
        self.liveness.on_send(seq, now);
        Probe {
            kind: Kind::Probe,
            session: self.session,
            seq,
            sent_ns: now,
            site: self.me.clone(),
        }
    }

    /// A probe interval passed while the connection is down: a window with no reply counts it
    /// as sent and lost, so that a dead connection reads as 100% loss for every window it is
    /// down (see [`Window::close`]).
    pub fn unsendable(&mut self) {
        self.window.unsendable();
    }

    /// The connection is gone: liveness goes down at once; pending probes are lost.
    pub fn connection_lost(&mut self) -> Option<LivenessEvent> {
        self.connected = false;
        for slot in self.ring.iter_mut().filter(|s| s.fate == Fate::Pending) {
            slot.fate = Fate::Lost;
            self.window.lost();
        }
        self.liveness.connection_lost()
    }

    /// A new connection is up; the caller must use a new session number, so replies to the
    /// old one are refused as stale.
    pub fn reconnected(&mut self, session: u32) {
        self.connected = true;
        self.session = session;
        self.ring.clear();
        self.max_answered = None;
    }

    /// Whether the connection is currently up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Classifies a reply received at `now`.
    pub fn on_reply(&mut self, reply: &Probe, now: u64) -> Result<ReplyOutcome, Refused> {
        if reply.kind != Kind::Reply {
            return Err(Refused::NotReply);
        }
        if reply.session != self.session {
            return Err(Refused::StaleSession);
        }
        if reply.seq >= self.next_seq {
            return Err(Refused::Unsent);
        }
        let Some(i) = reply
            .seq
            .checked_sub(self.base)
            .filter(|&i| (i as usize) < self.ring.len())
        else {
            return Err(Refused::TooOld);
        };
        let slot = &mut self.ring[i as usize];
        if slot.sent_ns != reply.sent_ns {
            return Err(Refused::Mismatch);
        }
        let reordered = self.max_answered.is_some_and(|m| reply.seq < m);
        let kind = match slot.fate {
            Fate::Answered => {
                self.window.duplicate();
                return Ok(ReplyOutcome {
                    kind: ReplyKind::Duplicate,
                    reordered: false,
                    event: None,
                });
            }
            Fate::Lost => {
                slot.fate = Fate::Answered;
                self.window.late();
                ReplyKind::Late
            }
            Fate::Pending => {
                slot.fate = Fate::Answered;
                let rtt_ns = now.saturating_sub(slot.sent_ns);
                self.window.received(rtt_ns);
                self.srtt_ns = Some(match self.srtt_ns {
                    None => rtt_ns as f64,
                    Some(s) => s + (rtt_ns as f64 - s) / 8.0,
                });
                ReplyKind::InTime { rtt_ns }
            }
        };
        if reordered {
            self.window.reordered();
        }
        self.max_answered = Some(self.max_answered.map_or(reply.seq, |m| m.max(reply.seq)));
        let rtt_ns = now.saturating_sub(reply.sent_ns);
        let misses = self.liveness.misses();
        let event = self.liveness.on_reply(reply.seq, rtt_ns, now);
        self.after_misses(misses, now);
        Ok(ReplyOutcome {
            kind,
            reordered,
            event,
        })
    }

    /// Advances time: probes past the loss timeout are lost; a run of liveness misses may
    /// declare the link down.
    pub fn poll(&mut self, now: u64) -> Option<LivenessEvent> {
        let timeout = self.loss_timeout().as_nanos() as u64;
        for slot in self.ring.iter_mut() {
            if now.saturating_sub(slot.sent_ns) <= timeout {
                break;
            }
            if slot.fate == Fate::Pending {
                slot.fate = Fate::Lost;
                self.window.lost();
            }
        }
        // Keep two loss timeouts of history so late replies and duplicates are classified.
        while self
            .ring
            .front()
            .is_some_and(|s| s.fate != Fate::Pending && now.saturating_sub(s.sent_ns) > 2 * timeout)
        {
            self.ring.pop_front();
            self.base += 1;
        }
        let misses = self.liveness.misses();
        let event = self.liveness.poll(now);
        self.after_misses(misses, now);
        event
    }

    /// Starts a burst if liveness counted a miss since it stood at `before`, the link rarely
    /// misses, and the last burst is older than the cooldown.
    fn after_misses(&mut self, before: u64, now: u64) {
        let b = &self.cfg.burst;
        if b.extra == 0
            || self.liveness.misses() == before
            || self.liveness.is_down()
            || self.liveness.miss_rate() >= b.below_miss_rate
            || self
                .burst_started
                .is_some_and(|t| now.saturating_sub(t) < b.cooldown.as_nanos() as u64)
        {
            return;
        }
        self.burst_started = Some(now);
        self.burst_until = now.saturating_add(b.duration.as_nanos() as u64);
        self.bursts += 1;
    }

    /// Whether a burst is running at `now`: the shell then sends `extra` more probes per
    /// interval.
    pub fn bursting(&self, now: u64) -> bool {
        now < self.burst_until
    }

    /// Bursts started so far.
    pub fn bursts(&self) -> u64 {
        self.bursts
    }

    /// When `poll` next has something to do (a liveness deadline or a loss timeout), if any.
    pub fn next_deadline(&self) -> Option<u64> {
        let pending = self.ring.iter().find(|s| s.fate == Fate::Pending)?;
        let live = self.liveness.next_deadline();
        let loss = pending.sent_ns + self.loss_timeout().as_nanos() as u64 + 1;
        Some(live.map_or(loss, |l| l.min(loss)))
    }

    /// Closes the current window.
    pub fn close_window(&mut self) -> WindowReport {
        self.window.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn session() -> PeerSession {
        PeerSession::new(SessionConfig::default(), SiteId::new("a").unwrap(), 7)
    }

    #[test]
    fn replies_are_classified_in_time_late_duplicate_reordered() {
        let mut s = session();
        let p0 = s.next_probe(0);
        let p1 = s.next_probe(100 * MS);
        let p2 = s.next_probe(200 * MS);
        // p1 answered first, then p0 (reordered), then p1 again (duplicate).
        let o = s.on_reply(&p1.reflect(), 140 * MS).unwrap();
        assert_eq!(o.kind, ReplyKind::InTime { rtt_ns: 40 * MS });
        let o = s.on_reply(&p0.reflect(), 150 * MS).unwrap();
        assert!(o.reordered);
        assert_eq!(
            s.on_reply(&p1.reflect(), 160 * MS).unwrap().kind,
            ReplyKind::Duplicate
        );
        // p2 times out, then arrives late.
        s.poll(1_300 * MS);
        assert_eq!(
            s.on_reply(&p2.reflect(), 1_350 * MS).unwrap().kind,
            ReplyKind::Late
        );
        let w = s.close_window();
        assert_eq!(
            (w.sent, w.received, w.lost, w.late, w.duplicates, w.reordered),
            (3, 2, 1, 1, 1, 1)
        );
    }

    #[test]
    fn forged_stale_and_unsent_replies_are_refused() {
        let mut s = session();
        let p = s.next_probe(0);
        let mut other = p.reflect();
        other.session = 8;
        assert_eq!(s.on_reply(&other, MS), Err(Refused::StaleSession));
        let mut future = p.reflect();
        future.seq = 5;
        assert_eq!(s.on_reply(&future, MS), Err(Refused::Unsent));
        let mut forged = p.reflect();
        forged.sent_ns = 1;
        assert_eq!(s.on_reply(&forged, MS), Err(Refused::Mismatch));
        assert_eq!(s.on_reply(&p, MS), Err(Refused::NotReply));
        // None of them touched the window.
        assert_eq!(s.close_window().received, 0);
    }

    #[test]
    fn history_is_bounded_and_old_replies_are_refused() {
        let mut s = session();
        let first = s.next_probe(0);
        for i in 1..1_000u64 {
            let p = s.next_probe(i * 100 * MS);
            s.on_reply(&p.reflect(), i * 100 * MS + 10 * MS).unwrap();
            s.poll(i * 100 * MS + 10 * MS);
        }
        assert!(s.ring.len() < 40, "ring holds {}", s.ring.len());
        assert_eq!(s.on_reply(&first.reflect(), 100_000 * MS), Err(Refused::TooOld));
    }

    #[test]
    fn a_dead_connection_reads_as_full_loss_and_a_new_session_starts_clean() {
        let mut s = session();
        let old = s.next_probe(0);
        assert_eq!(s.connection_lost(), Some(LivenessEvent::Down));
        for _ in 0..9 {
            s.unsendable();
        }
        let w = s.close_window();
        assert_eq!((w.sent, w.lost, w.received), (10, 10, 0));
        assert_eq!(w.loss, 1.0);
        s.reconnected(9);
        assert_eq!(s.on_reply(&old.reflect(), MS), Err(Refused::StaleSession));
        let p = s.next_probe(2_000 * MS);
        let o = s.on_reply(&p.reflect(), 2_030 * MS).unwrap();
        assert_eq!(o.event, Some(LivenessEvent::Up));
    }

    #[test]
    fn the_window_a_connection_comes_up_in_is_judged_on_real_probes_only() {
        let mut s = session();
        for _ in 0..7 {
            s.unsendable();
        }
        for i in 0..3u64 {
            let p = s.next_probe(i * 100 * MS);
            s.on_reply(&p.reflect(), i * 100 * MS + 20 * MS).unwrap();
        }
        let w = s.close_window();
        assert_eq!((w.sent, w.received, w.lost), (3, 3, 0), "{w:?}");
        assert_eq!(w.loss, 0.0);
    }

    #[test]
    fn the_loss_timeout_stretches_to_three_rtts_on_long_links() {
        let mut s = session();
        for i in 0..20u64 {
            let p = s.next_probe(i * 100 * MS);
            s.on_reply(&p.reflect(), i * 100 * MS + 500 * MS).unwrap();
        }
        assert!(
            s.loss_timeout() >= Duration::from_millis(1_400),
            "{:?}",
            s.loss_timeout()
        );
        assert!(s.next_deadline().is_none(), "nothing pending");
        s.next_probe(10_000 * MS);
        assert!(s.next_deadline().is_some());
    }

    /// Drives a 40 ms link at 10 Hz for `probes` probes from `t`, polling like the shell does;
    /// `lost(i)` says whether probe `i` goes unanswered. Returns the time after the last one.
    fn drive(s: &mut PeerSession, t: u64, probes: u64, lost: impl Fn(u64) -> bool) -> u64 {
        let mut t = t;
        for i in 0..probes {
            let p = s.next_probe(t);
            if !lost(i) {
                s.on_reply(&p.reflect(), t + 40 * MS).unwrap();
            }
            t += 100 * MS;
            s.poll(t);
        }
        t
    }

    #[test]
    fn a_miss_on_a_clean_link_starts_one_burst_per_cooldown() {
        let mut s = session();
        let t = drive(&mut s, 0, 300, |_| false);
        assert!(!s.bursting(t));
        assert_eq!(s.bursts(), 0);
        // One probe goes missing: at its liveness deadline a burst starts, for 2 s.
        let _ = s.next_probe(t);
        let dl = s.next_deadline().expect("a pending probe has a deadline");
        s.poll(dl);
        assert_eq!(s.bursts(), 1);
        assert!(s.bursting(dl) && s.bursting(dl + 1_900 * MS));
        assert!(!s.bursting(dl + 2_001 * MS));
        // A second miss within the cooldown starts nothing; one after it does.
        let t = drive(&mut s, dl + 100 * MS, 20, |i| i == 5);
        assert_eq!(s.bursts(), 1);
        // Once the misses have aged out of the miss rate (about 200 probes), a miss bursts again.
        let _ = drive(&mut s, t, 300, |i| i == 250);
        assert_eq!(s.bursts(), 2);
    }

    #[test]
    fn a_link_known_to_be_lossy_does_not_burst() {
        let mut s = session();
        // 5% of probes lost for 40 s: the miss rate is far above 1%.
        let t = drive(&mut s, 0, 400, |i| i % 20 == 7);
        let before = s.bursts();
        let _ = drive(&mut s, t, 100, |i| i % 20 == 7);
        assert_eq!(s.bursts(), before, "a lossy link kept bursting");
    }

    #[test]
    fn bursts_can_be_turned_off() {
        let mut cfg = SessionConfig::default();
        cfg.burst.extra = 0;
        let mut s = PeerSession::new(cfg, SiteId::new("a").unwrap(), 7);
        let _ = drive(&mut s, 0, 300, |i| i == 250);
        assert_eq!(s.bursts(), 0);
    }
}
