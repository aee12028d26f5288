//! One peer's probing state, without I/O: what to send, what an echo means, when a probe is lost.
//!
//! Two sites share one connection and every datagram is both a probe and the echo of the
//! peer's datagrams received since the last send (see [`crate::wire`]). Each side *asks* on
//! its own timer (every second probe interval while the peer asks too, every interval when it
//! does not), and answers the peer's asks at once; an answer is a probe in its own right,
//! echoed by the peer's next datagram, and so is a datagram sent to carry a backlog of echoes
//! ([`FLUSH_AT`]). So both sites get a sample per probe interval from one
//! datagram per interval in each direction, where probe-and-reflect on a connection per
//! direction takes three packets.
//!
//! The async shell calls [`PeerSession::next_datagram`] to send (on its ask timer, and at once
//! when [`PeerSession::on_datagram`] says so: [`Reply`]), feeds every arriving datagram to
//! `on_datagram`, calls [`PeerSession::poll`] at [`PeerSession::next_deadline`] and closes a
//! window every `window` with [`PeerSession::close_window`]. Time is always a parameter
//! (monotonic nanoseconds), so the whole state machine is tested with a simulated clock.
//!
//! Every datagram sent stays in a ring indexed by sequence number until its fate is known and
//! a little longer, so an echo is classified in O(1): in time, late (after it was counted
//! lost: at `loss_timeout`, or once three later datagrams were echoed),
//! duplicate, reordered, or refused (never sent, too old, or holding longer than the probe
//! has existed: forged). Fast liveness times asks only: an answer's echo waits for the peer's
//! next datagram, which says nothing about the path.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::liveness::{Liveness, LivenessConfig, LivenessEvent};
use crate::window::{Window, WindowReport};
use crate::wire::{ANSWER, ASK, Datagram, Echo, MAX_ECHOES, STALLED, site_tag};

/// Per-peer probing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// A probe not answered within `max(loss_timeout, 3 × smoothed RTT)` is lost. Default 1 s.
    pub loss_timeout: Duration,
    /// A probe is lost as soon as a datagram sent this many places after it has been echoed
    /// (RFC 9002's packet threshold); 0 leaves losses to the timeout alone. Default 3. The
    /// peer echoes datagrams in the order they arrived, and a datagram carrying echoes that is
    /// lost takes them along (or they come again with the next, which this rule waits for),
    /// so an echo skipped by three later ones will not come unless the network reordered by
    /// three datagrams (30 ms in a burst, 300 ms at 10 Hz): for media, as late as lost. The
    /// timeout alone found a loss a second after it happened, while the window counted
    /// replies within a round trip: a burst's first window held its replies and none of its
    /// losses, and the loss of its last second came after it, with few replies. In the lab a
    /// 2% brown-out's first window of a burst read 185 of 185.
    pub packet_threshold: u32,
    /// Fast liveness settings (the probe interval lives there).
    pub liveness: LivenessConfig,
    /// Evidence bursts on a surprising miss.
    pub burst: BurstConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            loss_timeout: Duration::from_secs(1),
            packet_threshold: 3,
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
    /// Extra probes per probe interval during a burst; 0 turns bursts off. Default 9 (ten
    /// times the probe rate). Telling 2% loss from the mesh's 0.2% surely takes about five
    /// losses, some 250 probes across the lossy way. In the lab (brownout2-25), from the first
    /// lost probe of a 2% brown-out to the controller's verdict: 4.0 s median over 13
    /// brown-outs (two runs) at ten times the rate, against 7–9 s, or not within the
    /// brown-out's 15 s one time in three, at five times. It costs a fifth more probe traffic on the 25-site
    /// lab's mesh (0.1% loss each way), where a random miss bursts about every 50 s per link.
    pub extra: u32,
    /// How long a burst lasts. Default 2 s. (Extending a burst on every miss during it was
    /// tried and left: in the lab, a moment when many links missed probes at once then became
    /// 270 route changes, the bursts' load a likely part of it.)
    pub duration: Duration,
    /// Least time between the starts of two bursts. Default 5 s. A miss within it, not the
    /// running burst's own, starts a burst as it ends.
    pub cooldown: Duration,
    /// Most bursts in a row: a burst whose own asks miss (while it runs, or up to a loss
    /// timeout after, while its last asks' verdicts come in) is followed at once by the next,
    /// without the cooldown, up to this many. Default 2; 1 turns chaining off. At 5% loss a
    /// 2-second burst of five times the rate held about 100 asks, and one in four such bursts
    /// lost too few of them (three or less) to tell the brown-out from noise; the link then
    /// waited out the cooldown and a second miss, and its brown-out was routed around after
    /// 8 to 10 s instead of 4 to 5. The chain stops at the first burst that misses nothing, so
    /// noise costs one burst as before, and a burst a host stall set off costs at most one
    /// more. (Chains of four were tried with ten-fold bursts: on the noise-only scenario,
    /// whose links lose 1% of round trips, a random miss then kept a link bursting for 8 s
    /// before the burst gate knew it lossy, probing cost doubled, and a flap came.)
    pub chain: u32,
    /// Only a link whose long-run miss rate (about the last 2000 regular probes, as it stood
    /// [`GATE_LAG`] ago and more) is below this bursts. Default 0.005. Long-run: on a mesh
    /// losing 0.1% each way, one random miss used to lift the 200-probe rate past 0.5% and
    /// keep the next miss — perhaps a brown-out's first — from bursting for twenty seconds.
    pub below_miss_rate: f64,
    /// The share of a prober's peers that may burst at once (see [`BurstSlots`]), at least
    /// two. Default 0.25. A brown-out hits a link, or a site's links, each of which its far end
    /// sees as one peer's; misses on many peers at once are this prober's own host stalling.
    /// In the lab such a stall, with every peer bursting at once, loaded the machine further
    /// and became 540 route changes in five seconds. A share rather than a count: noise alone
    /// keeps about 6% of peers bursting (a random miss every 50 s per link at 0.1% loss each
    /// way, a slot held 3 s), which a fixed count would fill on a large mesh.
    pub max_share: f64,
    /// Heal bursts: a link that lost at least this many probes within `heal_lookback` and
    /// then none for `heal_quiet` gets one burst for that quiet run (within the cooldown,
    /// the gate and the slots as any burst); 0 turns them off. Default 5. The end of a
    /// brown-out is a run of answered probes, and the controller tells it from a lucky run
    /// probe by probe: at 10 a second that took 18 s after a 5% brown-out and up to 48 s
    /// after a 2% one, pairs kept on detours all along (in the lab, 14–38 s after a 5%
    /// brown-out on global-25). A burst of the quiet link brings those probes in seconds;
    /// if the link still loses, its losses are more evidence of that. Five: on a mesh losing
    /// 0.1% each way, three losses in 30 s come by chance to one link end in forty, and the
    /// lab's busy host lost probes in clusters more often still (with three, a quarter of
    /// global-25's bursts were heal bursts and probing cost 17% more); a brown-out the
    /// controller sees has shown about five losses, its onset bursts' included.
    pub heal_after_losses: u32,
    /// How long since the last loss was found before a heal burst. Default 2 s.
    pub heal_quiet: Duration,
    /// The losses must fall within this span. Default 30 s.
    pub heal_lookback: Duration,
    /// Most bursts in a row the controller may ask for on one link (see
    /// [`PeerSession::ask_burst`]); 0 ignores its asks. Default 3, six seconds at ten times
    /// the rate: some 600 probes, in which a 2% rise shows a dozen losses, and a false alarm
    /// the clean run the controller's heal test needs (about 480 probes after 2%). A link
    /// still asked for then waits a cooldown and a burst's length before the next run.
    pub asked_max: u32,
}

impl Default for BurstConfig {
    fn default() -> Self {
        BurstConfig {
            extra: 9,
            duration: Duration::from_secs(2),
            cooldown: Duration::from_secs(5),
            chain: 2,
            below_miss_rate: 0.005,
            max_share: 0.25,
            heal_after_losses: 5,
            heal_quiet: Duration::from_secs(2),
            heal_lookback: Duration::from_secs(30),
            asked_max: 3,
        }
    }
}

/// Evidence bursts a session did not start on a miss, by reason: what the bursts held back,
/// so an operator sees why a link's brown-out was judged at the plain probe rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BurstsRefused {
    /// The prober's other peers held every slot (see [`BurstConfig::max_share`]).
    pub slots: u64,
    /// The miss came just after a stall of this host (see [`BurstSlots`]).
    pub host_stall: u64,
    /// The link misses too often to burst: lossy by nature, or still counting a recent
    /// brown-out's misses (see [`BurstConfig::below_miss_rate`]).
    pub lossy: u64,
    /// The controller asked for more bursts in a row than [`BurstConfig::asked_max`].
    pub asked_limit: u64,
}

impl BurstsRefused {
    /// Each count with its `reason` label (`axon_probe_bursts_refused_total`): the one list
    /// the metrics are made from.
    pub fn by_reason(&self) -> [(&'static str, u64); 4] {
        [
            ("slots", self.slots),
            ("host_stall", self.host_stall),
            ("lossy", self.lossy),
            ("asked_limit", self.asked_limit),
        ]
    }
}

/// Echoes one datagram carries at once from which the next datagram carries them again.
/// A datagram lost costs the peer a probe for every echo it carried, so one datagram that
/// carried a backlog (the peer's datagrams that arrived while this host stalled) read as a
/// run of losses a binomial test takes for a rise in loss: in a 25-site lab run, 0.27% of
/// datagrams carried three to sixteen echoes, and lost probes came in runs of three or more
/// 45 times, of five or more five times, where independent drops would give a handful of
/// runs past two (29 and once since). Sent twice, a backlog's echoes are lost only with both datagrams. From
/// three: one or two echoes are the common case (80% of datagrams), and repeating those would
/// hide the return way's loss from a round trip's count. The peer counts the second copy of
/// an echo it already has as a duplicate.
const REPEAT_FROM: usize = 3;

/// Echoes waiting from which a datagram goes out at once to carry them ([`Reply::Echoes`]).
/// Half of [`MAX_ECHOES`], so that with the repeat of this backlog the next datagram still
/// has room for as many new ones.
///
/// A side sends on its own timer and answers the peer's asks, and that kept the backlog
/// short, except at the end of a burst on a long link: the peer answers the asks still in
/// flight, a round trip of them (34 at a hundred a second over 340 ms), while this side is
/// back to an ask every 200 ms. The queue held sixteen, the oldest went unechoed, and the peer
/// counted runs of two to five of its answers lost that no network dropped. In a 25-site lab
/// run (brownout2-25) that was 219 of 4,571 lost probes, all within bursts, whose windows the
/// change test weighs most: false rises in loss on clean links.
pub const FLUSH_AT: usize = MAX_ECHOES / 2;

/// What the shell sends at once for a datagram that arrived ([`PeerSession::on_datagram`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Nothing: its echo waits for the next datagram.
    Wait,
    /// The answer to the peer's ask.
    Answer,
    /// A datagram to carry the echoes waiting, [`FLUSH_AT`] or more, before the queue
    /// overflows and the peer counts the oldest lost. Like an answer, it is a probe.
    Echoes,
}

/// What one prober's sessions share about bursts: slots for the bursts it may run at once
/// (see [`BurstConfig::max_share`]), and when its host last stalled. A session takes a slot when
/// it starts a burst and gives it back once its chain is over, or when it is dropped.
///
/// A stall of this host (a timer of the prober's firing [`HOST_STALL`] late or more) delays
/// the processing of every echo, and the asks whose deadlines pass meanwhile miss on every
/// link at once: none of that says anything about a path. A miss whose ask was in flight
/// when a stall ended starts no burst; a burst on every link at the moment the host has no
/// time to spare only deepens the stall (in the lab, a quarter of every prober's links
/// bursting after a 200 ms stall led to a second one and 270 route changes).
#[derive(Debug)]
pub struct BurstSlots {
    /// Bursts allowed at once (changes when peers are added or removed).
    cap: AtomicU32,
    busy: AtomicU32,
    /// When the host last stalled (ns, the sessions' clock); 0 never.
    stalled_at: AtomicU64,
}

/// A timer of the prober's firing this late means its host stalled (tokio's timers fire within
/// a millisecond on an idle host, within a few on a busy one).
pub const HOST_STALL: Duration = Duration::from_millis(25);

impl BurstSlots {
    /// Slots for `share` of `peers` bursting at once, at least two.
    pub fn for_peers(share: f64, peers: usize) -> Arc<Self> {
        let cap = (share * peers as f64).ceil().clamp(2.0, f64::from(u32::MAX));
        Self::new(cap as u32)
    }

    /// Slots for `cap` bursts at once.
    pub fn new(cap: u32) -> Arc<Self> {
        Arc::new(BurstSlots {
            cap: AtomicU32::new(cap),
            busy: AtomicU32::new(0),
            stalled_at: AtomicU64::new(0),
        })
    }

    /// Sizes the slots for `share` of `peers` again (a reload added or removed peers); bursts
    /// already running keep their slots.
    pub fn resize(&self, share: f64, peers: usize) {
        let cap = (share * peers as f64).ceil().clamp(2.0, f64::from(u32::MAX));
        self.cap.store(cap as u32, Ordering::Relaxed);
    }

    /// Bursts allowed at once.
    pub fn cap(&self) -> u32 {
        self.cap.load(Ordering::Relaxed)
    }

    /// Bursts running now.
    pub fn busy(&self) -> u32 {
        self.busy.load(Ordering::Relaxed)
    }

    /// A timer due at `due` fired at `now` (ns): a stall of the host when it is
    /// [`HOST_STALL`] late or more. Returns whether it was.
    pub fn timer_fired(&self, due: u64, now: u64) -> bool {
        let stalled = now.saturating_sub(due) >= HOST_STALL.as_nanos() as u64;
        if stalled {
            self.stalled_at.fetch_max(now, Ordering::AcqRel);
        }
        stalled
    }

    /// Whether the host stalled within `span` ns before `now`.
    fn stalled_within(&self, now: u64, span: u64) -> bool {
        let at = self.stalled_at.load(Ordering::Acquire);
        at != 0 && now.saturating_sub(at) <= span
    }

    fn try_take(&self) -> bool {
        self.busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                (b < self.cap.load(Ordering::Relaxed)).then_some(b + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        // Never below zero: only a session holding a slot gives one back.
        let _ = self
            .busy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| b.checked_sub(1));
    }
}

/// Why an echo or a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// An echo of a sequence number never sent.
    Unsent,
    /// An echo older than the history kept: cannot be classified.
    TooOld,
    /// An echo holding a probe longer than it has existed: forged or corrupted.
    Forged,
    /// A datagram of the peer's seen before (a replay).
    Replayed,
}

impl Refused {
    /// A short, stable label for the `reason` of a drop counter.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Unsent => "unsent",
            Refused::TooOld => "too_old",
            Refused::Forged => "forged",
            Refused::Replayed => "replayed",
        }
    }
}

/// What an echo turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoKind {
    /// In time; its RTT was recorded.
    InTime {
        /// Round trip, ns, the peer's hold taken out.
        rtt_ns: u64,
    },
    /// In time, but its round trip spanned a stall of this prober's host, or of the peer's
    /// (its datagram says [`STALLED`]): received, its RTT set aside (see
    /// [`crate::window::Window::received_across_stall`]).
    AcrossStall {
        /// Round trip, ns, the peer's hold taken out.
        rtt_ns: u64,
    },
    /// After it was counted lost (its loss timeout passed, or later probes' echoes skipped
    /// it by the packet threshold).
    Late,
    /// A second echo of the same probe.
    Duplicate,
}

/// The outcome of one accepted echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoOutcome {
    /// What the echo was.
    pub kind: EchoKind,
    /// Whether it came after the echo of a newer probe.
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
    ask: bool,
    fate: Fate,
}

/// One peer's probing state for the pair's connection.
#[derive(Debug)]
pub struct PeerSession {
    cfg: SessionConfig,
    /// This site's [`site_tag`], written into every datagram.
    tag: u32,
    next_seq: u32,
    /// `ring[i]` is sequence `base + i`.
    ring: VecDeque<Slot>,
    base: u32,
    max_answered: Option<u32>,
    /// Sequences below this have been judged by the packet threshold (see
    /// [`SessionConfig::packet_threshold`]).
    gap_judged: u32,
    /// When this connection's first datagram left (ns): probes of its first loss timeout are
    /// left to the timeout (see [`PeerSession::lose_skipped`]).
    first_sent_ns: Option<u64>,
    /// Probes found lost by the packet threshold, before their timeout.
    lost_early: u64,
    /// Replies whose round trip spanned a stall of either host (see [`EchoKind::AcrossStall`]).
    across_stall: u64,
    srtt_ns: Option<f64>,
    window: Window,
    liveness: Liveness,
    connected: bool,
    ever_connected: bool,
    /// The peer's datagrams to echo with the next send: (its sequence, arrival ns).
    to_echo: Vec<(u32, u64)>,
    /// A backlog the last datagram echoed, echoed again by the next (see [`REPEAT_FROM`]).
    repeat: Vec<(u32, u64)>,
    /// The peer's highest sequence seen, and a bitmap of the 64 below and at it (bit `i` is
    /// `max − i`): replays are refused, so nothing is echoed twice.
    peer_max: Option<u32>,
    peer_seen: u64,
    /// When the peer last asked.
    peer_asked_ns: Option<u64>,
    /// A burst runs until this instant (ns); 0 when none ever started.
    burst_until: u64,
    /// When the last burst started.
    burst_started: Option<u64>,
    /// Bursts started since this state was created.
    bursts: u64,
    /// Bursts in the current chain (see [`BurstConfig::chain`]).
    chained: u32,
    /// A miss came while the last burst's cooldown ran: a burst is due when it ends (see
    /// [`PeerSession::after_misses`]).
    deferred: bool,
    /// Bursts started for such a miss (among `bursts`).
    deferred_bursts: u64,
    /// The prober's burst slots, when bursts are limited across peers; whether this session
    /// holds one.
    slots: Option<Arc<BurstSlots>>,
    holding: bool,
    /// Bursts not started, by reason.
    refused: BurstsRefused,
    /// The long-run miss rate that gates bursts: as it stood 10 to 20 s ago (see
    /// [`GATE_LAG`]).
    gate_rate: f64,
    /// The long-run miss rate when last sampled, and when (ns): the next `gate_rate`.
    gate_sample: (u64, f64),
    /// Times `gate_rate` was taken from a sample: from the second on it measures asks.
    gate_samples: u32,
    /// When the last `heal_after_losses` losses of the current episode were found (ns),
    /// oldest first. An episode is a run of losses each within `heal_lookback` of the last.
    loss_times: VecDeque<u64>,
    /// The burst gate's rate when the episode began: whether the link was lossy before it.
    episode_gate: f64,
    /// Heal bursts in the current episode.
    episode_heals: u32,
    /// The loss whose quiet run has had its heal burst (ns; 0 none).
    healed_after: u64,
    /// Heal bursts started (among `bursts`).
    heal_bursts: u64,
    /// Bursts the controller asked for (among `bursts`).
    asked_bursts: u64,
    /// Asked bursts in the current run, and when the last of them was asked for (ns).
    asked_run: u32,
    asked_last: u64,
    /// `Down` verdicts held back for a stall of the host.
    downs_held: u64,
}

/// How far behind the long-run miss rate the burst gate runs: a brown-out's own misses must
/// not close the gate on its first seconds, when bursts matter. Its regular asks alone, a
/// miss every two seconds at 5% loss, lift a young link's rate past 0.5% in five; the gate
/// sees them 10 to 20 s later, after two to four bursts. A link lossy by nature is gated
/// as soon as its lossy history is that old.
pub const GATE_LAG: Duration = Duration::from_secs(10);

impl PeerSession {
    /// A fresh state for the datagrams of site `me`, not yet connected.
    pub fn new(cfg: SessionConfig, me: &str) -> Self {
        let liveness = Liveness::new(cfg.liveness.clone());
        PeerSession {
            cfg,
            tag: site_tag(me),
            next_seq: 0,
            ring: VecDeque::new(),
            base: 0,
            max_answered: None,
            gap_judged: 0,
            first_sent_ns: None,
            lost_early: 0,
            across_stall: 0,
            srtt_ns: None,
            window: Window::default(),
            liveness,
            connected: false,
            ever_connected: false,
            to_echo: Vec::with_capacity(MAX_ECHOES),
            repeat: Vec::with_capacity(MAX_ECHOES),
            peer_max: None,
            peer_seen: 0,
            peer_asked_ns: None,
            burst_until: 0,
            burst_started: None,
            bursts: 0,
            chained: 0,
            deferred: false,
            deferred_bursts: 0,
            slots: None,
            holding: false,
            refused: BurstsRefused::default(),
            gate_rate: 0.0,
            gate_sample: (0, 0.0),
            gate_samples: 0,
            loss_times: VecDeque::new(),
            episode_gate: 0.0,
            episode_heals: 0,
            healed_after: 0,
            heal_bursts: 0,
            asked_bursts: 0,
            asked_run: 0,
            asked_last: 0,
            downs_held: 0,
        }
    }

    /// This session's bursts take a slot of `slots`, shared with the prober's other peers.
    pub fn with_burst_slots(mut self, slots: Arc<BurstSlots>) -> Self {
        self.slots = Some(slots);
        self
    }

    /// Stops drawing on the prober's burst slots (its peer is no longer measured, only
    /// answered): gives back a slot it holds and takes no other. The session itself goes on,
    /// so the peer sees the same sequence numbers and echoes as before.
    pub fn leave_burst_slots(&mut self) {
        self.release();
        self.slots = None;
    }

    /// Whether liveness currently says down.
    pub fn is_down(&self) -> bool {
        self.liveness.is_down()
    }

    /// Whether an ask just missed on a link not yet declared down: the shell asks again every
    /// half interval until an echo or the verdict comes.
    pub fn suspect(&self) -> bool {
        self.connected && self.liveness.suspect()
    }

    /// Asks that missed their liveness deadline so far.
    pub fn misses(&self) -> u64 {
        self.liveness.misses()
    }

    /// The loss timeout in force: the configured one, or three smoothed RTTs if longer.
    pub fn loss_timeout(&self) -> Duration {
        let three_rtt = Duration::from_nanos(self.srtt_ns.map_or(0, |s| (3.0 * s) as u64));
        self.cfg.loss_timeout.max(three_rtt)
    }

    /// Whether the regular ask of timer tick number `tick` is due at `now`: every second tick
    /// while the peer asks too (its answers then carry the other half of the samples), every
    /// tick when it does not.
    pub fn ask_due(&self, tick: u64, now: u64) -> bool {
        let recent = 6 * self.cfg.liveness.probe_interval.as_nanos() as u64;
        let peer_asks = self
            .peer_asked_ns
            .is_some_and(|t| now.saturating_sub(t) <= recent);
        !peer_asks || tick.is_multiple_of(2)
    }

    /// The next datagram to send at `now` (a regular ask on the probe timer, the answer to
    /// one of the peer's, or a datagram for an echo backlog), carrying the echoes of every peer datagram received since the last
    /// send (and of the last datagram's, when those were a backlog: see [`REPEAT_FROM`]); it
    /// is recorded as a probe.
    pub fn next_datagram(&mut self, now: u64, ask: bool) -> Datagram {
        self.datagram(now, ask, true)
    }

    /// An ask sent because of a miss (an evidence burst, or asking again while suspect):
    /// [`PeerSession::next_datagram`], left out of the long-run miss rate that gates bursts.
    pub fn next_extra_ask(&mut self, now: u64) -> Datagram {
        self.datagram(now, true, false)
    }

    fn datagram(&mut self, now: u64, ask: bool, regular: bool) -> Datagram {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        if self.ring.is_empty() {
            self.base = seq;
        }
        self.first_sent_ns.get_or_insert(now);
        self.ring.push_back(Slot {
            sent_ns: now,
            ask,
            fate: Fate::Pending,
        });
        self.window.sent();
        if ask {
            self.liveness.on_send(u64::from(seq), now, regular);
        }
        // A backlog's echoes go out twice (see `REPEAT_FROM`); the repeats come first, so that
        // the wire's limit drops them before the new ones.
        let echoes = self
            .repeat
            .iter()
            .chain(&self.to_echo)
            .map(|&(seq, at)| Echo {
                seq,
                hold_us: u32::try_from(now.saturating_sub(at) / 1_000).unwrap_or(u32::MAX),
            })
            .collect();
        // Read (or held) across a stall of this host: the peer's round trips measured it.
        let oldest = self.repeat.iter().chain(&self.to_echo).map(|&(_, at)| at).min();
        let stalled = oldest.is_some_and(|at| {
            let span = now.saturating_sub(at) + HOST_STALL.as_nanos() as u64;
            self.slots.as_ref().is_some_and(|s| s.stalled_within(now, span))
        });
        self.repeat.clear();
        if self.to_echo.len() >= REPEAT_FROM {
            std::mem::swap(&mut self.repeat, &mut self.to_echo);
        } else {
            self.to_echo.clear();
        }
        Datagram {
            flags: if ask { ASK } else { ANSWER } | if stalled { STALLED } else { 0 },
            seq,
            sent_us: now / 1_000,
            site: self.tag,
            echoes,
        }
    }

    /// A probe interval passed while the connection is down: a window with no echo counts it
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

    /// A connection is up (a first one, a new one, or one that replaced another): sequence
    /// numbers start again on both sides, so nothing of the old one is carried over.
    pub fn connected(&mut self) {
        self.connected = true;
        self.ever_connected = true;
        self.next_seq = 0;
        self.base = 0;
        self.ring.clear();
        self.max_answered = None;
        self.gap_judged = 0;
        self.first_sent_ns = None;
        self.to_echo.clear();
        self.repeat.clear();
        self.peer_max = None;
        self.peer_seen = 0;
        self.peer_asked_ns = None;
        self.liveness.new_connection();
    }

    /// Whether the connection is currently up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether a connection was ever up: a link never reached reports no windows (it has
    /// nothing to say about loss), one that was reports its outages as loss.
    pub fn ever_connected(&self) -> bool {
        self.ever_connected
    }

    /// Takes in a datagram from the peer received at `now` (already checked to come from the
    /// peer): queues it to be echoed and classifies its echoes, handing each outcome to
    /// `each`. Returns what to send at once: an answer when the peer asked, a datagram for
    /// the echo backlog when it reached [`FLUSH_AT`].
    pub fn on_datagram(
        &mut self,
        d: &Datagram,
        now: u64,
        mut each: impl FnMut(Result<EchoOutcome, Refused>),
    ) -> Result<Reply, Refused> {
        if !self.first_sight(d.seq) {
            return Err(Refused::Replayed);
        }
        if self.to_echo.len() == MAX_ECHOES {
            // Only when the shell could not send what `Reply::Echoes` asked for: the oldest
            // goes unechoed and its sender counts it lost.
            self.to_echo.remove(0);
        }
        self.to_echo.push((d.seq, now));
        if d.asks() {
            self.peer_asked_ns = Some(now);
        }
        let peer_stalled = d.flags & STALLED != 0;
        for e in &d.echoes {
            each(self.on_echo(*e, now, peer_stalled));
        }
        Ok(if d.asks() {
            Reply::Answer
        } else if self.to_echo.len() >= FLUSH_AT {
            Reply::Echoes
        } else {
            Reply::Wait
        })
    }

    /// Records the peer's sequence `seq`; false if it was seen before (or is too old to tell).
    fn first_sight(&mut self, seq: u32) -> bool {
        let Some(max) = self.peer_max else {
            self.peer_max = Some(seq);
            self.peer_seen = 1;
            return true;
        };
        if seq > max {
            let shift = seq - max;
            self.peer_seen = if shift >= 64 { 0 } else { self.peer_seen << shift };
            self.peer_seen |= 1;
            self.peer_max = Some(seq);
            return true;
        }
        let back = max - seq;
        if back >= 64 || self.peer_seen & (1 << back) != 0 {
            return false;
        }
        self.peer_seen |= 1 << back;
        true
    }

    /// Classifies one echo of our datagram received at `now`.
    fn on_echo(&mut self, e: Echo, now: u64, peer_stalled: bool) -> Result<EchoOutcome, Refused> {
        // The ring holds sequences `base..next_seq`, contiguous (2^32 datagrams are more than
        // a decade of one connection at 10 Hz, so sequences never wrap in practice).
        if e.seq >= self.next_seq {
            return Err(Refused::Unsent);
        }
        let Some(slot) = e
            .seq
            .checked_sub(self.base)
            .and_then(|i| self.ring.get_mut(i as usize))
        else {
            return Err(Refused::TooOld);
        };
        let elapsed = now.saturating_sub(slot.sent_ns);
        let hold = u64::from(e.hold_us) * 1_000;
        if hold > elapsed {
            return Err(Refused::Forged);
        }
        let rtt_ns = elapsed - hold;
        let reordered = self.max_answered.is_some_and(|m| e.seq < m);
        let kind = match slot.fate {
            Fate::Answered => {
                self.window.duplicate();
                return Ok(EchoOutcome {
                    kind: EchoKind::Duplicate,
                    reordered: false,
                    event: None,
                });
            }
            Fate::Lost => {
                slot.fate = Fate::Answered;
                self.window.late();
                EchoKind::Late
            }
            Fate::Pending => {
                slot.fate = Fate::Answered;
                // A stall of this host that ended within the round trip (or just before it)
                // held the echo unread, or one of the peer's held the probe (it says so,
                // `STALLED`): the round trip measured a host, not the path.
                let span = elapsed + HOST_STALL.as_nanos() as u64;
                if peer_stalled || self.slots.as_ref().is_some_and(|s| s.stalled_within(now, span)) {
                    self.window.received_across_stall(rtt_ns);
                    self.across_stall += 1;
                    EchoKind::AcrossStall { rtt_ns }
                } else {
                    self.window.received(rtt_ns);
                    self.srtt_ns = Some(match self.srtt_ns {
                        None => rtt_ns as f64,
                        Some(s) => s + (rtt_ns as f64 - s) / 8.0,
                    });
                    EchoKind::InTime { rtt_ns }
                }
            }
        };
        let ask = slot.ask;
        if reordered {
            self.window.reordered();
        }
        self.max_answered = Some(self.max_answered.map_or(e.seq, |m| m.max(e.seq)));
        self.lose_skipped(now);
        let mut event = None;
        if ask {
            let misses = self.liveness.misses();
            event = self.liveness.on_reply(u64::from(e.seq), rtt_ns, now);
            self.after_misses(misses, now);
        }
        Ok(EchoOutcome {
            kind,
            reordered,
            event,
        })
    }

    /// Probes still pending that the newest echo skipped by the packet threshold or more
    /// are lost (see [`SessionConfig::packet_threshold`]). Not those sent within a loss
    /// timeout of the connection's first datagram: while a connection starts, the peer may
    /// not yet be echoing on it (its side of the pair is still taking it over, and may start
    /// its session on it again), so early echoes can skip datagrams it never queued; the
    /// timeout judges those as before. (In a four-site test mesh, sessions found 30 probes
    /// of their first second lost at once this way, and a site read as sick.)
    fn lose_skipped(&mut self, now: u64) {
        let k = self.cfg.packet_threshold;
        let Some(through) = self.max_answered.and_then(|m| m.checked_sub(k)).filter(|_| k > 0) else {
            return;
        };
        let from = self.gap_judged.max(self.base);
        if through < from {
            return;
        }
        self.gap_judged = through + 1;
        let young_until = self.first_sent_ns.map_or(u64::MAX, |t| {
            t.saturating_add(self.loss_timeout().as_nanos() as u64)
        });
        let mut lost_since = None;
        for slot in self
            .ring
            .range_mut((from - self.base) as usize..=(through - self.base) as usize)
        {
            if slot.fate == Fate::Pending && slot.sent_ns >= young_until {
                slot.fate = Fate::Lost;
                self.window.lost();
                self.lost_early += 1;
                lost_since.get_or_insert(slot.sent_ns);
            }
        }
        if let Some(sent) = lost_since {
            self.found_lost(sent, now);
        }
    }

    /// Probes found lost at `now`, the oldest sent at `sent`: remembered for heal bursts,
    /// unless a stall of this host since it left may have made the loss (held its echo past
    /// the timeout, or overflowed the socket's buffer).
    fn found_lost(&mut self, sent: u64, now: u64) {
        let span = now.saturating_sub(sent) + HOST_STALL.as_nanos() as u64;
        if !self.slots.as_ref().is_some_and(|s| s.stalled_within(now, span)) {
            self.note_loss(now);
        }
    }

    /// Probes found lost by the packet threshold, before their timeout (among those counted
    /// lost).
    pub fn lost_early(&self) -> u64 {
        self.lost_early
    }

    /// Replies whose round trip spanned a stall of this host or the peer's, their RTT set
    /// aside (among those received).
    pub fn across_stall(&self) -> u64 {
        self.across_stall
    }

    /// Advances time: probes past the loss timeout are lost; a run of missed asks may declare
    /// the link down.
    pub fn poll(&mut self, now: u64) -> Option<LivenessEvent> {
        let timeout = self.loss_timeout().as_nanos() as u64;
        // The oldest probe found lost now, if any: when it was sent.
        let mut lost_since = None;
        for slot in self.ring.iter_mut() {
            if now.saturating_sub(slot.sent_ns) <= timeout {
                break;
            }
            if slot.fate == Fate::Pending {
                slot.fate = Fate::Lost;
                self.window.lost();
                lost_since.get_or_insert(slot.sent_ns);
            }
        }
        if let Some(sent) = lost_since {
            self.found_lost(sent, now);
        }
        // Keep two loss timeouts of history so late echoes and duplicates are classified.
        while self
            .ring
            .front()
            .is_some_and(|s| s.fate != Fate::Pending && now.saturating_sub(s.sent_ns) > 2 * timeout)
        {
            self.ring.pop_front();
            self.base += 1;
        }
        let misses = self.liveness.misses();
        let mut event = self.liveness.poll(now);
        if event == Some(LivenessEvent::Down) && self.stalled_during_run(now) && self.liveness.excuse_run() {
            self.downs_held += 1;
            event = None;
        }
        self.after_misses(misses, now);
        event
    }

    /// Whether this prober's host stalled while the current run of misses was in flight: a
    /// stall delays every echo, and the asks whose deadlines pass meanwhile miss on every link
    /// at once. A `Down` on every one of them is a route storm the path did not cause (in
    /// the lab, a host under load for a moment moved 200 pairs off their direct links at
    /// once, and back within seconds), so such a run is excused once (see
    /// [`Liveness::excuse_run`]): a dead link is declared down by the next run, a few asks
    /// later.
    fn stalled_during_run(&self, now: u64) -> bool {
        let (Some(slots), Some(sent)) = (&self.slots, self.liveness.run_since()) else {
            return false;
        };
        let span = now.saturating_sub(sent) + HOST_STALL.as_nanos() as u64;
        slots.stalled_within(now, span)
    }

    /// `Down` verdicts taken back because this host stalled during their run (see
    /// [`PeerSession::poll`]).
    pub fn downs_held(&self) -> u64 {
        self.downs_held
    }

    /// Starts a burst if liveness counted a miss since it stood at `before`, the link rarely
    /// misses (its long-run rate as it stood [`GATE_LAG`] ago and more), and the last burst is
    /// older than the cooldown; or, when the miss is the running burst's own, chains the next
    /// burst to it (see [`BurstConfig::chain`]). A miss within the cooldown, not the burst's
    /// own, is kept, and its burst starts as the cooldown ends: the cooldown bounds how often
    /// a link bursts, not which misses are heard. (In the lab a random miss's burst ran just
    /// before a 2% brown-out began; the brown-out's first two losses came within its cooldown
    /// and started nothing, and its burst waited seven seconds for the next loss.) Without
    /// a miss, starts the heal burst that is due, if any (see
    /// [`BurstConfig::heal_after_losses`]).
    fn after_misses(&mut self, before: u64, now: u64) {
        let lag = GATE_LAG.as_nanos() as u64;
        if now.saturating_sub(self.gate_sample.0) >= lag {
            self.gate_rate = self.gate_sample.1;
            self.gate_sample = (now, self.liveness.long_miss_rate());
            self.gate_samples = self.gate_samples.saturating_add(1);
        }
        // A burst's own asks are judged up to a loss timeout after it ends; then its chain is
        // over and its slot free for another peer.
        let tail = self.loss_timeout().as_nanos() as u64;
        let own = self.burst_started.is_some() && now < self.burst_until.saturating_add(tail);
        if self.holding && !own {
            self.release();
        }
        let missed = self.liveness.misses() != before;
        let b = &self.cfg.burst;
        if b.extra == 0 || self.liveness.is_down() {
            return;
        }
        let cooling = self
            .burst_started
            .is_some_and(|t| now.saturating_sub(t) < b.cooldown.as_nanos() as u64);
        let due = self.deferred && !cooling;
        if !missed && !due {
            self.heal_burst(now);
            return;
        }
        if self.gate_rate >= b.below_miss_rate {
            self.deferred = false;
            self.refused.lossy += u64::from(missed);
            return;
        }
        let duration = b.duration.as_nanos() as u64;
        if own && missed {
            // The next burst is already chained when more than one burst's time is left.
            if self.chained < b.chain && self.burst_until.saturating_sub(now) <= duration {
                let start = self.burst_until.max(now);
                self.burst_started = Some(start);
                self.burst_until = start.saturating_add(duration);
                self.chained += 1;
                self.bursts += 1;
            }
            return;
        }
        // The missed ask was in flight for a deadline before now: a stall that ended since (or
        // a timer's worth after) may have held its echo.
        let in_flight = (self.liveness.deadline() + HOST_STALL).as_nanos() as u64;
        let stalled = self
            .slots
            .as_ref()
            .is_some_and(|slots| slots.stalled_within(now, in_flight));
        if cooling {
            self.deferred |= !own && !stalled;
            return;
        }
        self.deferred = false;
        if stalled {
            self.refused.host_stall += 1;
            return;
        }
        if let Some(slots) = &self.slots {
            if !slots.try_take() {
                self.refused.slots += 1;
                return;
            }
            self.holding = true;
        }
        self.burst_started = Some(now);
        self.burst_until = now.saturating_add(duration);
        self.chained = 1;
        self.bursts += 1;
        self.deferred_bursts += u64::from(due && !missed);
    }

    /// Remembers probes found lost at `now` for the heal bursts; the first loss of an episode
    /// notes whether the link was lossy before it. Losses, not liveness misses: a miss is an
    /// ask late past its deadline, and on a busy host late answers made a quarter of all
    /// bursts in the lab heal bursts of links that had lost nothing. Nor losses a stall of
    /// the host may have made (see the caller).
    fn note_loss(&mut self, now: u64) {
        let b = &self.cfg.burst;
        let keep = b.heal_after_losses as usize;
        if keep == 0 {
            return;
        }
        let lookback = b.heal_lookback.as_nanos() as u64;
        if self
            .loss_times
            .back()
            .is_none_or(|&l| now.saturating_sub(l) > lookback)
        {
            self.loss_times.clear();
            // A link too young for the gate to have measured it is not presumed clean here
            // (as it is for onset bursts): on the lab's noise-only mesh, whose links lose 1%,
            // its first misses made heal bursts that raised probing cost by 70%.
            self.episode_gate = if self.gate_samples >= 2 {
                self.gate_rate
            } else {
                f64::INFINITY
            };
            self.episode_heals = 0;
        }
        if self.loss_times.len() == keep {
            self.loss_times.pop_front();
        }
        self.loss_times.push_back(now.max(1));
    }

    /// Starts the heal burst of the current quiet run, if it is due (see
    /// [`BurstConfig::heal_after_losses`]). Gated on the link's miss rate before the episode
    /// (its own misses would close the usual gate just when the end comes), and each heal
    /// burst of an episode waits for a quiet run twice as long as the one before: a link
    /// still losing 5% answers 20 asks in a row one time in three, and would otherwise burst
    /// at every cooldown for as long as its brown-out lasts.
    fn heal_burst(&mut self, now: u64) {
        let b = &self.cfg.burst;
        let (Some(&first), Some(&last)) = (self.loss_times.front(), self.loss_times.back()) else {
            return;
        };
        let ns = |d: Duration| d.as_nanos() as u64;
        let quiet = ns(b.heal_quiet)
            .saturating_mul(1 << self.episode_heals.min(16))
            .min(ns(b.heal_lookback));
        if self.loss_times.len() < b.heal_after_losses as usize
            || self.episode_gate >= b.below_miss_rate
            || self.healed_after == last
            || now.saturating_sub(last) < quiet
            || last - first > ns(b.heal_lookback)
            || self.bursting(now)
            || self.holding
            || self
                .burst_started
                .is_some_and(|t| now.saturating_sub(t) < ns(b.cooldown))
        {
            return;
        }
        if let Some(slots) = &self.slots {
            // Tried again at the next poll: the quiet run goes on.
            if !slots.try_take() {
                return;
            }
            self.holding = true;
        }
        self.healed_after = last;
        self.episode_heals += 1;
        self.burst_started = Some(now);
        self.burst_until = now.saturating_add(ns(b.duration));
        self.chained = 1;
        self.bursts += 1;
        self.heal_bursts += 1;
    }

    /// Heal bursts started so far (counted in [`PeerSession::bursts`] too).
    pub fn heal_bursts(&self) -> u64 {
        self.heal_bursts
    }

    /// Bursts started as a cooldown ended, for a miss within it (among [`PeerSession::bursts`]).
    pub fn deferred_bursts(&self) -> u64 {
        self.deferred_bursts
    }

    /// The controller asks for more evidence on this link at `now`: it found the loss risen
    /// and the windows since have not confirmed it (`ReportAck.evidence_wanted`), so it holds
    /// the rise as uncertain and routes wait. The prober's own bursts start on a miss and end
    /// after a chain of two; a rise found at a chain's end was confirmed at the plain rate,
    /// a loss every five seconds at 2%, and in the lab a pair waited six seconds on that.
    /// Starts a burst now, or chains one onto a burst with half a burst's time or less left,
    /// within the prober's slots and at most `asked_max` in a row; whether it did. Neither the
    /// burst gate nor the host-stall check applies: the controller judged windows, not a
    /// miss.
    pub fn ask_burst(&mut self, now: u64) -> bool {
        let b = &self.cfg.burst;
        if b.extra == 0 || b.asked_max == 0 || self.liveness.is_down() {
            return false;
        }
        let ns = |d: Duration| d.as_nanos() as u64;
        let duration = ns(b.duration);
        if self.burst_until.saturating_sub(now) > duration / 2 {
            // The evidence is on its way.
            return false;
        }
        if self.asked_run > 0 && now.saturating_sub(self.asked_last) > ns(b.cooldown) + duration {
            self.asked_run = 0;
        }
        if self.asked_run >= b.asked_max {
            self.refused.asked_limit += 1;
            return false;
        }
        if !self.holding
            && let Some(slots) = &self.slots
        {
            if !slots.try_take() {
                self.refused.slots += 1;
                return false;
            }
            self.holding = true;
        }
        let start = self.burst_until.max(now);
        self.burst_started = Some(start);
        self.burst_until = start.saturating_add(duration);
        // Only the controller extends an asked burst: its misses chain nothing more.
        self.chained = b.chain;
        self.asked_run += 1;
        self.asked_last = now;
        self.asked_bursts += 1;
        self.bursts += 1;
        true
    }

    /// Bursts started because the controller asked (among [`PeerSession::bursts`]).
    pub fn asked_bursts(&self) -> u64 {
        self.asked_bursts
    }

    /// Whether a burst is running at `now`: the shell then sends `extra` more asks per
    /// interval.
    pub fn bursting(&self, now: u64) -> bool {
        now < self.burst_until
    }

    /// Bursts started so far.
    pub fn bursts(&self) -> u64 {
        self.bursts
    }

    /// Bursts not started, by reason (see [`BurstsRefused`]).
    pub fn bursts_refused(&self) -> BurstsRefused {
        self.refused
    }

    fn release(&mut self) {
        if let Some(slots) = self.slots.as_ref().filter(|_| self.holding) {
            slots.give_back();
        }
        self.holding = false;
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

impl Drop for PeerSession {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn session() -> PeerSession {
        let mut s = PeerSession::new(SessionConfig::default(), "a");
        s.connected();
        s
    }

    /// A datagram of the peer's, sequence `seq`, echoing `echoes` (our seq, hold ms).
    fn from_peer(seq: u32, flags: u8, echoes: &[(u32, u64)]) -> Datagram {
        Datagram {
            flags,
            seq,
            sent_us: 0,
            site: site_tag("b"),
            echoes: echoes
                .iter()
                .map(|&(seq, hold_ms)| Echo {
                    seq,
                    hold_us: (hold_ms * 1_000) as u32,
                })
                .collect(),
        }
    }

    /// Feeds `d` at `now` and collects the echo outcomes.
    fn feed(s: &mut PeerSession, d: &Datagram, now: u64) -> Vec<Result<EchoOutcome, Refused>> {
        let mut out = Vec::new();
        s.on_datagram(d, now, |o| out.push(o)).unwrap();
        out
    }

    #[test]
    fn the_peer_s_hold_is_taken_out_of_the_round_trip() {
        let mut s = session();
        let p = s.next_datagram(0, false);
        // The peer got it at 20 ms, held it 60 ms, its datagram arrived at 100 ms.
        let o = feed(&mut s, &from_peer(0, ASK, &[(p.seq, 60)]), 100 * MS);
        assert_eq!(o[0].unwrap().kind, EchoKind::InTime { rtt_ns: 40 * MS });
    }

    #[test]
    fn a_round_trip_across_a_stall_of_this_host_is_received_but_not_measured() {
        let slots = BurstSlots::new(4);
        let mut s = PeerSession::new(SessionConfig::default(), "a").with_burst_slots(slots.clone());
        s.connected();
        let t = 10_000 * MS;
        // A 40 ms round trip, then a probe whose echo a 200 ms stall of this host held unread.
        let p = s.next_datagram(t, false);
        let o = feed(&mut s, &from_peer(0, 0, &[(p.seq, 0)]), t + 40 * MS);
        assert_eq!(o[0].unwrap().kind, EchoKind::InTime { rtt_ns: 40 * MS });
        let p = s.next_datagram(t + 100 * MS, false);
        assert!(slots.timer_fired(t + 100 * MS, t + 340 * MS));
        let o = feed(&mut s, &from_peer(1, 0, &[(p.seq, 0)]), t + 340 * MS);
        assert_eq!(o[0].unwrap().kind, EchoKind::AcrossStall { rtt_ns: 240 * MS });
        // Sent after the stall, well clear of it: measured again.
        let p = s.next_datagram(t + 400 * MS, false);
        let o = feed(&mut s, &from_peer(2, 0, &[(p.seq, 0)]), t + 440 * MS);
        assert_eq!(o[0].unwrap().kind, EchoKind::InTime { rtt_ns: 40 * MS });
        let w = s.close_window();
        assert_eq!((w.received, w.lost, s.across_stall()), (3, 0, 1));
        assert!((w.rtt_ms[4] - 40.0).abs() < 0.1, "{:?}", w.rtt_ms);
        assert_eq!(w.jitter_ms, 0.0);
        // Without the stall the same round trip is measured, and moves the jitter.
        let mut s = session();
        let p = s.next_datagram(t, false);
        feed(&mut s, &from_peer(0, 0, &[(p.seq, 0)]), t + 40 * MS);
        let p = s.next_datagram(t + 100 * MS, false);
        let o = feed(&mut s, &from_peer(1, 0, &[(p.seq, 0)]), t + 340 * MS);
        assert_eq!(o[0].unwrap().kind, EchoKind::InTime { rtt_ns: 240 * MS });
        assert!(s.close_window().jitter_ms > 10.0);
    }

    #[test]
    fn a_peer_that_stalled_while_holding_a_probe_says_so_and_its_round_trip_is_set_aside() {
        let peer_slots = BurstSlots::new(4);
        let mut peer = PeerSession::new(SessionConfig::default(), "b").with_burst_slots(peer_slots.clone());
        peer.connected();
        let mut s = session();
        let t = 10_000 * MS;
        // A calm peer echoes without the flag, and the round trip is measured.
        let p = s.next_datagram(t, false);
        peer.on_datagram(&p, t + 20 * MS, |_| {}).unwrap();
        let e = peer.next_datagram(t + 30 * MS, false);
        assert_eq!(e.flags & STALLED, 0);
        let o = feed(&mut s, &e, t + 50 * MS);
        assert_eq!(o[0].unwrap().kind, EchoKind::InTime { rtt_ns: 40 * MS });
        // The peer's host stalls 200 ms with our probe unread; it reads it at the stall's end.
        let p = s.next_datagram(t + 100 * MS, false);
        assert!(peer_slots.timer_fired(t + 120 * MS, t + 320 * MS));
        peer.on_datagram(&p, t + 320 * MS, |_| {}).unwrap();
        let e = peer.next_datagram(t + 325 * MS, false);
        assert_ne!(e.flags & STALLED, 0);
        let o = feed(&mut s, &e, t + 345 * MS);
        assert_eq!(o[0].unwrap().kind, EchoKind::AcrossStall { rtt_ns: 240 * MS });
        // The flag survives the wire, and a datagram well after the stall goes without it.
        let mut wire = Vec::new();
        e.encode(&mut wire);
        assert_ne!(Datagram::decode(&wire).unwrap().flags & STALLED, 0);
        let p = s.next_datagram(t + 1_000 * MS, false);
        peer.on_datagram(&p, t + 1_020 * MS, |_| {}).unwrap();
        assert_eq!(peer.next_datagram(t + 1_030 * MS, false).flags & STALLED, 0);
        assert_eq!(s.across_stall(), 1);
    }

    #[test]
    fn a_probe_skipped_by_three_later_echoes_is_lost_before_its_timeout() {
        let mut s = session();
        // The connection's first datagram, two seconds before: its first second is past.
        let d = s.next_datagram(0, true);
        feed(&mut s, &from_peer(50, 0, &[(d.seq, 0)]), 40 * MS);
        s.poll(2_000 * MS);
        s.close_window();
        let t = 2_000 * MS;
        let seqs: Vec<u32> = (0..5u64)
            .map(|i| s.next_datagram(t + i * 10 * MS, true).seq)
            .collect();
        // Echoes of 2 and then 1: reordered by one, within the threshold, nothing lost.
        feed(&mut s, &from_peer(0, 0, &[(seqs[2], 0)]), t + 60 * MS);
        let o = feed(&mut s, &from_peer(1, 0, &[(seqs[1], 0)]), t + 61 * MS);
        assert!(matches!(
            o[0],
            Ok(EchoOutcome {
                kind: EchoKind::InTime { .. },
                reordered: true,
                ..
            })
        ));
        // 3 skips 0 by three: lost now, a second before its timeout.
        feed(&mut s, &from_peer(2, 0, &[(seqs[3], 0)]), t + 70 * MS);
        assert_eq!(s.lost_early(), 1);
        feed(&mut s, &from_peer(3, 0, &[(seqs[4], 0)]), t + 80 * MS);
        let w = s.close_window();
        assert_eq!((w.sent, w.received, w.lost), (5, 4, 1));
        // Its echo after all: late, and the loss stands.
        let o = feed(&mut s, &from_peer(4, 0, &[(seqs[0], 0)]), t + 90 * MS);
        assert_eq!(o[0].unwrap().kind, EchoKind::Late);
        s.poll(t + 3_000 * MS);
        let w = s.close_window();
        assert_eq!((w.received, w.lost, w.late), (0, 0, 1));
        assert_eq!(s.lost_early(), 1);
    }

    /// A burst of 100 asks in a second, every 50th lost (2%), echoed 30 ms later: the window
    /// closed at the second's end.
    fn burst_window(packet_threshold: u32) -> WindowReport {
        let cfg = SessionConfig {
            packet_threshold,
            ..SessionConfig::default()
        };
        let mut s = PeerSession::new(cfg, "a");
        s.connected();
        // The connection's first second is past.
        let d = s.next_datagram(0, true);
        feed(&mut s, &from_peer(0, 0, &[(d.seq, 0)]), 40 * MS);
        s.poll(2_000 * MS);
        s.close_window();
        let t = 2_000 * MS;
        let mut peer_seq = 1;
        let mut due = VecDeque::new();
        for i in 0..100u64 {
            let now = t + i * 10 * MS;
            while due.front().is_some_and(|&(at, _)| at <= now) {
                let (at, seq) = due.pop_front().unwrap();
                feed(&mut s, &from_peer(peer_seq, 0, &[(seq, 0)]), at);
                peer_seq += 1;
            }
            s.poll(now);
            let d = s.next_extra_ask(now);
            if i % 50 != 25 {
                due.push_back((now + 30 * MS, d.seq));
            }
        }
        s.poll(t + 1_000 * MS);
        s.close_window()
    }

    #[test]
    fn a_connection_s_first_second_is_left_to_the_timeout() {
        // The peer echoes the first datagram, then nothing of the next thirty (its side was
        // still taking the connection over), then the newest: those thirty are not lost
        // before their timeout.
        let mut s = session();
        let seqs: Vec<u32> = (0..35u64)
            .map(|i| s.next_datagram(i * 20 * MS, true).seq)
            .collect();
        feed(&mut s, &from_peer(0, 0, &[(seqs[0], 0)]), 40 * MS);
        feed(&mut s, &from_peer(1, 0, &[(seqs[34], 0)]), 700 * MS);
        assert_eq!(s.lost_early(), 0);
        // After the first second, the threshold holds again: the two three places or more
        // behind the newest echo are lost.
        let later: Vec<u32> = (0..5u64)
            .map(|i| s.next_datagram(1_100 * MS + i * 10 * MS, true).seq)
            .collect();
        feed(&mut s, &from_peer(2, 0, &[(later[4], 0)]), 1_200 * MS);
        assert_eq!(s.lost_early(), 2);
    }

    #[test]
    fn a_burst_s_window_counts_its_own_losses() {
        let w = burst_window(3);
        assert_eq!((w.sent, w.lost), (100, 2), "{w:?}");
        // Timeouts alone find them a second later, in the next window: this one reads clean.
        let w = burst_window(0);
        assert_eq!((w.sent, w.lost), (100, 0), "{w:?}");
    }

    #[test]
    fn echoes_are_classified_in_time_late_duplicate_reordered() {
        let mut s = session();
        let p0 = s.next_datagram(0, true);
        let p1 = s.next_datagram(100 * MS, true);
        let p2 = s.next_datagram(200 * MS, true);
        // p1 echoed first, then p0 (reordered), then p1 again (duplicate).
        let o = feed(&mut s, &from_peer(0, 0, &[(p1.seq, 0)]), 140 * MS);
        assert_eq!(o[0].unwrap().kind, EchoKind::InTime { rtt_ns: 40 * MS });
        let o = feed(&mut s, &from_peer(1, 0, &[(p0.seq, 0), (p1.seq, 0)]), 150 * MS);
        assert!(o[0].unwrap().reordered);
        assert_eq!(o[1].unwrap().kind, EchoKind::Duplicate);
        // p2 times out, then its echo arrives late.
        s.poll(1_300 * MS);
        let o = feed(&mut s, &from_peer(2, 0, &[(p2.seq, 0)]), 1_350 * MS);
        assert_eq!(o[0].unwrap().kind, EchoKind::Late);
        let w = s.close_window();
        assert_eq!(
            (w.sent, w.received, w.lost, w.late, w.duplicates, w.reordered),
            (3, 2, 1, 1, 1, 1)
        );
    }

    #[test]
    fn every_peer_datagram_is_echoed_once_with_its_hold() {
        let mut s = session();
        assert!(feed(&mut s, &from_peer(0, ANSWER, &[]), 10 * MS).is_empty());
        assert!(feed(&mut s, &from_peer(1, ANSWER, &[]), 30 * MS).is_empty());
        let d = s.next_datagram(50 * MS, true);
        assert_eq!(d.flags, ASK);
        assert_eq!(
            d.echoes,
            vec![
                Echo {
                    seq: 0,
                    hold_us: 40_000
                },
                Echo {
                    seq: 1,
                    hold_us: 20_000
                }
            ]
        );
        assert!(s.next_datagram(60 * MS, false).echoes.is_empty(), "echoed twice");
        // A replay of the peer's datagram is refused and not echoed again.
        assert_eq!(
            s.on_datagram(&from_peer(1, ANSWER, &[]), 70 * MS, |_| {}),
            Err(Refused::Replayed)
        );
        assert!(s.next_datagram(80 * MS, false).echoes.is_empty());
    }

    fn echoed(d: &Datagram) -> Vec<u32> {
        d.echoes.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_backlog_of_echoes_goes_out_in_two_datagrams() {
        let mut s = session();
        for i in 0..4u32 {
            feed(&mut s, &from_peer(i, ANSWER, &[]), u64::from(10 + i) * MS);
        }
        assert_eq!(echoed(&s.next_datagram(50 * MS, true)), [0, 1, 2, 3]);
        feed(&mut s, &from_peer(4, ANSWER, &[]), 60 * MS);
        // Again, before the new one, each with its hold to this datagram.
        let again = s.next_datagram(70 * MS, false);
        assert_eq!(echoed(&again), [0, 1, 2, 3, 4]);
        assert_eq!(
            (again.echoes[0].hold_us, again.echoes[4].hold_us),
            (60_000, 10_000)
        );
        assert!(
            s.next_datagram(80 * MS, true).echoes.is_empty(),
            "sent a third time"
        );
        // One or two echoes go out once.
        feed(&mut s, &from_peer(5, ANSWER, &[]), 90 * MS);
        feed(&mut s, &from_peer(6, ANSWER, &[]), 91 * MS);
        assert_eq!(echoed(&s.next_datagram(100 * MS, true)), [5, 6]);
        assert!(s.next_datagram(110 * MS, true).echoes.is_empty());
    }

    /// A datagram of `b` that carried a backlog of `a`'s echoes is lost: `a` loses none of the
    /// probes it echoed (without the second copy it lost all four), and counts the second copies of the next
    /// backlog, which arrived, as duplicates.
    #[test]
    fn one_lost_datagram_costs_the_peer_no_probe_of_a_backlog() {
        let mut a = session();
        let mut b = PeerSession::new(SessionConfig::default(), "b");
        b.connected();
        let to_b = |b: &mut PeerSession, d: &Datagram, now: u64| {
            b.on_datagram(d, now, |_| {}).unwrap();
        };
        // `b` stalls while four of `a`'s datagrams arrive, then sends two; the first is lost.
        for i in 0..4u64 {
            let d = a.next_datagram(i * 10 * MS, false);
            to_b(&mut b, &d, (i * 10 + 20) * MS);
        }
        let _lost = b.next_datagram(60 * MS, false);
        let next = b.next_datagram(70 * MS, false);
        let o = feed(&mut a, &next, 90 * MS);
        assert_eq!(o.len(), 4);
        assert!(
            o.iter().all(|o| matches!(
                o,
                Ok(EchoOutcome {
                    kind: EchoKind::InTime { .. },
                    ..
                })
            )),
            "{o:?}"
        );
        // The next backlog arrives both times.
        for i in 0..3u64 {
            let d = a.next_datagram((100 + i * 10) * MS, false);
            to_b(&mut b, &d, (120 + i * 10) * MS);
        }
        for t in [150, 160] {
            let d = b.next_datagram(t * MS, false);
            feed(&mut a, &d, (t + 20) * MS);
        }
        a.poll(3_000 * MS);
        let w = a.close_window();
        assert_eq!((w.sent, w.received, w.lost, w.duplicates), (7, 7, 0, 3));
    }

    /// `a` bursts on a 340 ms link: an ask every 10 ms for 350 ms, then its regular asks at 3
    /// and 4 s. `b` answers each ask at once. Both follow [`Reply`] when `follow` is set (the
    /// shell), only answer asks otherwise. Returns `b`'s window at 4.5 s (every answer but
    /// the last is due by then) and the datagrams `a` sent to carry echoes.
    fn burst_end_on_a_long_link(follow: bool) -> (WindowReport, u32) {
        let one_way = 170 * MS;
        let (mut a, mut b) = (session(), PeerSession::new(SessionConfig::default(), "b"));
        b.connected();
        let mut asks: VecDeque<u64> = (0..35).map(|i| 2_000 * MS + i * 10 * MS).collect();
        asks.extend([0, 3_000 * MS, 4_000 * MS]);
        asks.make_contiguous().sort_unstable();
        // Datagrams in flight: (arrival, to `a`, datagram).
        let mut wire: Vec<(u64, bool, Datagram)> = Vec::new();
        let mut flushes = 0;
        loop {
            let next_arrival = wire.iter().map(|w| w.0).min();
            let now = match (asks.front(), next_arrival) {
                (Some(&t), Some(at)) if t <= at => {
                    asks.pop_front();
                    wire.push((t + one_way, false, a.next_datagram(t, true)));
                    continue;
                }
                (Some(&t), None) => {
                    asks.pop_front();
                    wire.push((t + one_way, false, a.next_datagram(t, true)));
                    continue;
                }
                (_, Some(at)) => at,
                (None, None) => break,
            };
            if now > 4_500 * MS {
                break;
            }
            let i = wire.iter().position(|w| w.0 == now).expect("due");
            let (_, to_a, d) = wire.swap_remove(i);
            let (me, from_a) = if to_a { (&mut a, false) } else { (&mut b, true) };
            // Through the wire format, which carries at most `MAX_ECHOES`.
            assert!(
                !follow || d.echoes.len() <= MAX_ECHOES,
                "{} echoes",
                d.echoes.len()
            );
            let mut bytes = Vec::new();
            d.encode(&mut bytes);
            let d = Datagram::decode(&bytes).unwrap();
            match me.on_datagram(&d, now, |_| {}).unwrap() {
                Reply::Answer => {}
                Reply::Echoes if follow => flushes += u32::from(to_a),
                Reply::Echoes | Reply::Wait => continue,
            }
            wire.push((now + one_way, from_a, me.next_datagram(now, false)));
        }
        b.poll(4_500 * MS);
        (b.close_window(), flushes)
    }

    /// A round trip of answers arrives after a burst's last ask: a datagram carries them
    /// before the queue overflows, and the peer loses none. Without it, it lost 19 of 37.
    #[test]
    fn the_answers_to_a_burst_s_last_round_trip_are_all_echoed() {
        let (w, flushes) = burst_end_on_a_long_link(true);
        assert_eq!((w.sent, w.received, w.lost), (38, 37, 0), "{w:?}");
        assert!(flushes >= 2, "{flushes} datagrams carried echoes");
        let (w, _) = burst_end_on_a_long_link(false);
        assert!(w.lost >= 10, "the queue did not overflow: {w:?}");
    }

    #[test]
    fn an_ask_is_reported_so_the_shell_answers_at_once() {
        let mut s = session();
        assert_eq!(
            s.on_datagram(&from_peer(0, ASK, &[]), MS, |_| {}),
            Ok(Reply::Answer)
        );
        assert_eq!(
            s.on_datagram(&from_peer(1, ANSWER, &[]), MS, |_| {}),
            Ok(Reply::Wait)
        );
        let answer = s.next_datagram(MS + 5_000, false);
        assert_eq!(answer.flags, ANSWER);
        assert_eq!(answer.echoes[0], Echo { seq: 0, hold_us: 5 });
    }

    #[test]
    fn forged_unsent_too_old_and_replayed_are_refused_without_touching_the_window() {
        let mut s = session();
        let p = s.next_datagram(0, true);
        let o = feed(&mut s, &from_peer(0, 0, &[(p.seq + 5, 0)]), MS);
        assert_eq!(o, vec![Err(Refused::Unsent)]);
        // Held 10 ms, but sent only 1 ms ago: a lie.
        let o = feed(&mut s, &from_peer(1, 0, &[(p.seq, 10)]), MS);
        assert_eq!(o, vec![Err(Refused::Forged)]);
        assert_eq!(s.close_window().received, 0);
        // Peer sequences far below the newest cannot be told from replays.
        feed(&mut s, &from_peer(500, 0, &[]), MS);
        assert_eq!(
            s.on_datagram(&from_peer(2, 0, &[]), MS, |_| {}),
            Err(Refused::Replayed)
        );
        // Out-of-order but new is fine.
        assert!(s.on_datagram(&from_peer(499, 0, &[]), MS, |_| {}).is_ok());
    }

    #[test]
    fn history_is_bounded_and_old_echoes_are_refused() {
        let mut s = session();
        let first = s.next_datagram(0, true);
        for i in 1..1_000u32 {
            let t = u64::from(i) * 100 * MS;
            let p = s.next_datagram(t, true);
            feed(&mut s, &from_peer(i, 0, &[(p.seq, 0)]), t + 10 * MS);
            s.poll(t + 10 * MS);
        }
        assert!(s.ring.len() < 40, "ring holds {}", s.ring.len());
        let o = feed(&mut s, &from_peer(5_000, 0, &[(first.seq, 0)]), 100_000 * MS);
        assert_eq!(o, vec![Err(Refused::TooOld)]);
    }

    #[test]
    fn a_dead_connection_reads_as_full_loss_and_a_new_one_starts_clean() {
        let mut s = session();
        s.next_datagram(0, true);
        assert_eq!(s.connection_lost(), Some(LivenessEvent::Down));
        for _ in 0..9 {
            s.unsendable();
        }
        let w = s.close_window();
        assert_eq!((w.sent, w.lost, w.received), (10, 10, 0));
        assert_eq!(w.loss, 1.0);
        s.connected();
        let p = s.next_datagram(2_000 * MS, true);
        assert_eq!(p.seq, 0, "sequences start again on a new connection");
        let o = feed(&mut s, &from_peer(0, 0, &[(p.seq, 0)]), 2_030 * MS);
        assert_eq!(o[0].unwrap().event, Some(LivenessEvent::Up));
    }

    #[test]
    fn a_link_never_connected_says_so() {
        let mut s = PeerSession::new(SessionConfig::default(), "a");
        assert!(!s.ever_connected() && !s.is_connected());
        s.connected();
        assert!(s.ever_connected());
    }

    #[test]
    fn the_window_a_connection_comes_up_in_is_judged_on_real_probes_only() {
        let mut s = session();
        for _ in 0..7 {
            s.unsendable();
        }
        for i in 0..3u32 {
            let t = u64::from(i) * 100 * MS;
            let p = s.next_datagram(t, true);
            feed(&mut s, &from_peer(i, 0, &[(p.seq, 0)]), t + 20 * MS);
        }
        let w = s.close_window();
        assert_eq!((w.sent, w.received, w.lost), (3, 3, 0), "{w:?}");
        assert_eq!(w.loss, 0.0);
    }

    #[test]
    fn the_loss_timeout_stretches_to_three_rtts_on_long_links() {
        let mut s = session();
        for i in 0..20u32 {
            let t = u64::from(i) * 100 * MS;
            let p = s.next_datagram(t, true);
            feed(&mut s, &from_peer(i, 0, &[(p.seq, 0)]), t + 500 * MS);
        }
        assert!(
            s.loss_timeout() >= Duration::from_millis(1_400),
            "{:?}",
            s.loss_timeout()
        );
        assert!(s.next_deadline().is_none(), "nothing pending");
        s.next_datagram(10_000 * MS, true);
        assert!(s.next_deadline().is_some());
    }

    #[test]
    fn unechoed_answers_are_lost_but_never_declare_the_link_down() {
        let mut s = session();
        // Warm the link up with asks, then send only answers that are never echoed.
        let mut t = drive(&mut s, 0, 100, |_| false);
        for _ in 0..30 {
            s.next_datagram(t, false);
            t += 100 * MS;
            assert_eq!(s.poll(t), None);
        }
        assert!(!s.is_down());
        s.poll(t + 2_000 * MS);
        assert!(s.close_window().lost >= 30);
    }

    #[test]
    fn asks_go_every_tick_alone_and_every_other_tick_when_the_peer_asks_too() {
        let mut s = session();
        assert!((0..4).all(|tick| s.ask_due(tick, 0)));
        feed(&mut s, &from_peer(0, ASK, &[]), 0);
        assert_eq!((0..4).filter(|&tick| s.ask_due(tick, 50 * MS)).count(), 2);
        // The peer stopped asking a while ago: back to every tick.
        assert!((0..4).all(|tick| s.ask_due(tick, 5_000 * MS)));
    }

    #[test]
    fn a_missed_ask_makes_the_link_suspect_until_an_echo() {
        let mut s = session();
        let t = drive(&mut s, 0, 100, |_| false);
        assert!(!s.suspect());
        s.next_datagram(t, true);
        let dl = s.next_deadline().unwrap();
        s.poll(dl);
        assert!(s.suspect() && !s.is_down());
        let p = s.next_datagram(dl, true);
        feed(&mut s, &from_peer(10_000, 0, &[(p.seq, 0)]), dl + 40 * MS);
        assert!(!s.suspect());
    }

    /// Simulates the shell on a 40 ± 2 ms link for `ms` milliseconds in 1 ms steps: an ask
    /// every 100 ms, and after a miss an ask at once and every 50 ms while suspect. Each way
    /// loses with probability `loss`; from `dark_from` ms on, everything is lost. Returns the
    /// liveness events with their times (ms).
    fn simulate(ms: u64, loss: f64, dark_from: Option<u64>) -> Vec<(u64, LivenessEvent)> {
        let coin = |i: u64, salt: u64| {
            let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64
        };
        let mut s = session();
        let mut arrivals: VecDeque<(u64, u32)> = VecDeque::new();
        let (mut sent, mut peer_seq, mut misses) = (0u64, 0u32, 0u64);
        let mut retry_at: Option<u64> = None;
        let mut events = Vec::new();
        let mut send = |s: &mut PeerSession, t: u64, arrivals: &mut VecDeque<(u64, u32)>| {
            let d = s.next_datagram(t * MS, true);
            sent += 1;
            let dark = dark_from.is_some_and(|from| t >= from);
            if !dark && coin(sent, 1) >= loss && coin(sent, 2) >= loss {
                let rtt = 38 + (coin(sent, 3) * 4.0) as u64;
                arrivals.push_back((t + rtt, d.seq));
            }
        };
        for t in 0..ms {
            if t % 100 == 0 {
                send(&mut s, t, &mut arrivals);
            }
            while arrivals.front().is_some_and(|&(at, _)| at <= t) {
                let (_, seq) = arrivals.pop_front().unwrap();
                peer_seq += 1;
                let d = from_peer(peer_seq, ANSWER, &[(seq, 0)]);
                s.on_datagram(&d, t * MS, |o| {
                    if let Ok(EchoOutcome { event: Some(e), .. }) = o {
                        events.push((t, e));
                    }
                })
                .unwrap();
            }
            if s.next_deadline().is_some_and(|d| d <= t * MS)
                && let Some(e) = s.poll(t * MS)
            {
                events.push((t, e));
            }
            if s.misses() != misses {
                misses = s.misses();
                if s.suspect() {
                    send(&mut s, t, &mut arrivals);
                    retry_at = Some(t + 50);
                }
            }
            if retry_at == Some(t) {
                retry_at = None;
                if s.suspect() {
                    send(&mut s, t, &mut arrivals);
                    retry_at = Some(t + 50);
                }
            }
        }
        events
    }

    #[test]
    fn ten_minutes_of_five_percent_loss_each_way_with_asks_again_never_look_like_an_outage() {
        let events = simulate(600_000, 0.05, None);
        assert!(events.is_empty(), "false alarms: {events:?}");
    }

    #[test]
    fn asking_again_after_a_miss_sees_a_blackhole_within_a_quarter_second() {
        for dark in [60_000, 60_037, 60_071] {
            let events = simulate(62_000, 0.0, Some(dark));
            let (at, e) = events[0];
            assert_eq!(e, LivenessEvent::Down);
            // Asks every 100 ms alone would need three ticks: 268 ms at the very best.
            assert!(at - dark <= 250, "LinkDown {} ms after the blackhole", at - dark);
        }
    }

    /// Drives a 40 ms link with an ask every 100 ms for `asks` asks from `t`, polling like the
    /// shell does; `lost(i)` says whether ask `i` goes unechoed. Returns the time after the
    /// last one.
    fn drive(s: &mut PeerSession, t: u64, asks: u64, lost: impl Fn(u64) -> bool) -> u64 {
        let mut t = t;
        for i in 0..asks {
            let p = s.next_datagram(t, true);
            if !lost(i) {
                let peer_seq = (t / MS) as u32;
                feed(s, &from_peer(peer_seq, ANSWER, &[(p.seq, 0)]), t + 40 * MS);
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
        // One ask goes missing: at its liveness deadline a burst starts, for 2 s.
        let _ = s.next_datagram(t, true);
        let dl = s.next_deadline().expect("a pending ask has a deadline");
        s.poll(dl);
        assert_eq!(s.bursts(), 1);
        assert!(s.bursting(dl) && s.bursting(dl + 1_900 * MS));
        assert!(!s.bursting(dl + 2_001 * MS));
        // A miss after the burst and its asks' verdicts, within the cooldown, starts nothing
        // before the cooldown ends (then it does: see the next test).
        let t = drive(&mut s, dl + 100 * MS, 45, |i| i == 35);
        assert!(t < dl + 5_000 * MS);
        assert_eq!(s.bursts(), 1);
        // A miss long after bursts again: the one owed at the cooldown's end, and its own.
        let _ = drive(&mut s, t, 300, |i| i == 250);
        assert_eq!((s.bursts(), s.deferred_bursts()), (3, 1));
    }

    #[test]
    fn a_miss_within_the_cooldown_bursts_as_it_ends() {
        let mut s = session();
        let t = drive(&mut s, 0, 300, |_| false);
        let _ = s.next_datagram(t, true);
        let dl = s.next_deadline().expect("a pending ask has a deadline");
        s.poll(dl);
        assert_eq!(s.bursts(), 1);
        // A miss 3 s after the burst began, past its asks' verdicts: kept for the cooldown's
        // end, 5 s after the burst began, when a burst starts for it.
        let t = drive(&mut s, dl + 100 * MS, 45, |i| i == 29);
        assert_eq!(
            (s.bursts(), s.deferred_bursts()),
            (1, 0),
            "a burst within the cooldown"
        );
        assert!(t < dl + 5_000 * MS);
        let t = drive(&mut s, t, 10, |_| false);
        assert_eq!(
            (s.bursts(), s.deferred_bursts()),
            (2, 1),
            "no burst at the cooldown's end"
        );
        assert!(s.bursting(t));
        // One burst for it: the next cooldown's end, with no miss in it, starts nothing.
        let _ = drive(&mut s, t, 100, |_| false);
        assert_eq!(s.bursts(), 2);
    }

    #[test]
    fn a_link_quiet_after_a_run_of_losses_gets_a_heal_burst() {
        let k = u64::from(BurstConfig::default().heal_after_losses);
        // A brown-out: an ask lost every second, `k` of them (they start onset bursts).
        let brownout = move |i: u64| i % 10 == 5 && i < 10 * k;
        // A session of `cfg`, 30 s of answered asks, then the brown-out; and the time after.
        let browned = |cfg: SessionConfig| {
            let mut s = PeerSession::new(cfg, "a");
            s.connected();
            let t = drive(&mut s, 0, 300, |_| false);
            let t = drive(&mut s, t, 10 * k, brownout);
            (s, t)
        };
        let (mut s, t) = browned(SessionConfig::default());
        let onset = s.bursts();
        assert!(onset >= 1 && s.heal_bursts() == 0);
        // Then every ask is answered: one heal burst, once the quiet run and the cooldown
        // since the onset bursts allow, and one only however long the link stays quiet.
        let t = drive(&mut s, t, 100, |_| false);
        assert_eq!((s.heal_bursts(), s.bursts()), (1, onset + 1));
        let _ = drive(&mut s, t, 300, |_| false);
        assert_eq!(s.heal_bursts(), 1);

        // A link still losing: each heal burst of an episode waits twice as long as the last
        // (the cooldown shortened to the bursts' length, so that the quiet run decides).
        let mut cfg = SessionConfig::default();
        cfg.burst.cooldown = cfg.burst.duration;
        let (mut s, t) = browned(cfg);
        let t = drive(&mut s, t, 100, |_| false);
        assert_eq!(s.heal_bursts(), 1);
        // A loss (found a loss timeout, 1 s, after its ask), then answers: 3 s after it is
        // found, not yet (4 s needed now); 2 s later, the second.
        let t = drive(&mut s, t, 40, |i| i == 0);
        assert_eq!(
            s.heal_bursts(),
            1,
            "the second heal burst did not wait twice as long"
        );
        let _ = drive(&mut s, t, 20, |_| false);
        assert_eq!(s.heal_bursts(), 2);

        // A link too young for the burst gate to have measured it gets none.
        let mut s = session();
        let t = drive(&mut s, 0, 10 * k, brownout);
        let _ = drive(&mut s, t, 100, |_| false);
        assert_eq!(s.heal_bursts(), 0, "a young link got a heal burst");

        // One loss fewer is no episode; `k` spread over more than 30 s are none either.
        let mut s = session();
        let t = drive(&mut s, 0, 300, |_| false);
        let t = drive(&mut s, t, 10 * k, |i| brownout(i) && i > 10);
        let t = drive(&mut s, t, 100, |_| false);
        assert_eq!(s.heal_bursts(), 0, "one loss too few made a heal burst");
        let _ = drive(&mut s, t, 400, |i| i == 360);
        assert_eq!(s.heal_bursts(), 0, "losses over 30 s apart made a heal burst");
        // Nor do `k` losses 10 s apart: one episode, but spread over more than 30 s.
        let mut s = session();
        let t = drive(&mut s, 0, 300, |_| false);
        let t = drive(&mut s, t, 100 * k, |i| i % 100 == 50);
        let _ = drive(&mut s, t, 100, |_| false);
        assert_eq!(s.heal_bursts(), 0, "losses spread over 40 s made a heal burst");

        // Off.
        let mut cfg = SessionConfig::default();
        cfg.burst.heal_after_losses = 0;
        let (mut s, t) = browned(cfg);
        let _ = drive(&mut s, t, 100, |_| false);
        assert_eq!(s.heal_bursts(), 0);
    }

    #[test]
    fn a_link_lossy_before_its_losses_gets_no_heal_burst() {
        // 2% of asks missed for 200 s: the burst gate closes, and a later episode of misses
        // begins on a link known to be lossy.
        let mut s = session();
        let t = drive(&mut s, 0, 2000, spread_loss(0.02));
        let t = drive(&mut s, t, 400, |_| false);
        let heals = s.heal_bursts();
        let k = u64::from(BurstConfig::default().heal_after_losses);
        let t = drive(&mut s, t, 10 * k, |i| i % 10 == 5);
        let _ = drive(&mut s, t, 100, |_| false);
        assert_eq!(s.heal_bursts(), heals, "a lossy link got a heal burst");
    }

    #[test]
    fn a_burst_that_misses_is_followed_by_one_more_at_once() {
        let mut cfg = SessionConfig::default();
        cfg.burst.chain = 2;
        // Onset bursts alone (heal bursts have tests of their own).
        cfg.burst.heal_after_losses = 0;
        let mut s = PeerSession::new(cfg, "a");
        s.connected();
        let t = drive(&mut s, 0, 300, |_| false);
        let _ = s.next_datagram(t, true);
        let dl = s.next_deadline().expect("a pending ask has a deadline");
        s.poll(dl);
        assert_eq!(s.bursts(), 1);
        // Misses among the burst's asks, and among the next one's: one more burst follows the
        // first without waiting out the cooldown, and no third (a chain of 2).
        let t = drive(&mut s, dl + 100 * MS, 40, |i| i % 10 == 5);
        assert_eq!(s.bursts(), 2, "a burst that missed was not followed by another");
        assert!(
            s.bursting(dl + 3_900 * MS),
            "the second burst does not follow the first"
        );
        assert!(
            !s.bursting(dl + 4_001 * MS),
            "the second burst outlasts its duration"
        );
        // A chain ends at its last burst: a later miss starts a new one, once the cooldown is
        // over and the long-run miss rate (lifted by the chain's misses) allows it.
        let _ = drive(&mut s, t, 1000, |i| i == 950);
        assert_eq!(s.bursts(), 3);

        // With chaining off, a burst that misses is followed by nothing.
        let mut cfg = SessionConfig::default();
        cfg.burst.chain = 1;
        let mut s = PeerSession::new(cfg, "a");
        s.connected();
        let t = drive(&mut s, 0, 300, |_| false);
        let _ = s.next_datagram(t, true);
        let dl = s.next_deadline().expect("a pending ask has a deadline");
        s.poll(dl);
        let _ = drive(&mut s, dl + 100 * MS, 40, |i| i % 10 == 5);
        assert_eq!(s.bursts(), 1);
    }

    #[test]
    fn peers_share_the_prober_s_burst_slots() {
        // One slot for two peers: while the first bursts, a miss on the second starts nothing
        // and is counted; once the first's chain is over (its last asks judged), the slot is
        // free and the second's next miss bursts. A session dropped mid-burst gives its slot
        // back.
        let slots = BurstSlots::new(1);
        let mut cfg = SessionConfig::default();
        cfg.burst.chain = 1;
        let mk = || {
            let mut s = PeerSession::new(cfg.clone(), "a").with_burst_slots(slots.clone());
            s.connected();
            s
        };
        let (mut a, mut b) = (mk(), mk());
        let t = drive(&mut a, 0, 300, |_| false);
        let _ = drive(&mut b, 0, 300, |_| false);
        let miss = |s: &mut PeerSession, at: u64| {
            let _ = s.next_datagram(at, true);
            let dl = s.next_deadline().expect("a pending ask has a deadline");
            s.poll(dl);
            dl
        };
        let dl = miss(&mut a, t);
        assert_eq!((a.bursts(), slots.busy()), (1, 1));
        let _ = miss(&mut b, t + 10 * MS);
        assert_eq!(
            (b.bursts(), b.bursts_refused()),
            (
                0,
                BurstsRefused {
                    slots: 1,
                    ..BurstsRefused::default()
                }
            ),
            "a second peer burst past the cap"
        );
        assert!(!b.bursting(dl + 100 * MS));
        // The burst ends after 2 s and its last asks are judged a loss timeout later.
        a.poll(dl + 2_500 * MS);
        assert_eq!(
            slots.busy(),
            1,
            "the slot was given back before the burst's asks were judged"
        );
        a.poll(dl + 3_100 * MS);
        assert_eq!(slots.busy(), 0, "the slot outlived the burst");
        let t = drive(&mut b, dl + 3_200 * MS, 10, |_| false);
        let _ = miss(&mut b, t);
        assert_eq!((b.bursts(), slots.busy()), (1, 1));
        drop(b);
        assert_eq!(slots.busy(), 0, "a dropped session kept its slot");
        // A quarter of the peers, rounded up, and never fewer than two.
        let caps = [(24, 6), (25, 7), (4, 2), (0, 2)].map(|(n, _)| BurstSlots::for_peers(0.25, n).cap());
        assert_eq!(caps, [6, 7, 2, 2]);
        // A reload that adds peers makes room for more bursts; one that removes them, less.
        let s = BurstSlots::for_peers(0.25, 4);
        s.resize(0.25, 24);
        assert_eq!(s.cap(), 6);
        s.resize(0.25, 1);
        assert_eq!(s.cap(), 2);
    }

    #[test]
    fn a_session_that_leaves_the_burst_slots_gives_its_slot_back_and_goes_on() {
        let slots = BurstSlots::new(1);
        assert!(slots.try_take());
        let mut s = PeerSession::new(SessionConfig::default(), "a").with_burst_slots(slots.clone());
        s.holding = true;
        s.connected();
        let before = s.next_datagram(0, true).seq;
        s.leave_burst_slots();
        assert_eq!(slots.busy(), 0, "the slot came back");
        assert!(s.slots.is_none());
        assert_eq!(s.next_datagram(1, true).seq, before + 1, "sequence numbers go on");
        drop(s);
        assert_eq!(slots.busy(), 0, "given back once only");
    }

    #[test]
    fn the_controller_s_asks_burst_a_link_within_their_limits() {
        let slots = BurstSlots::new(1);
        let mk = || {
            let mut s = PeerSession::new(SessionConfig::default(), "a").with_burst_slots(slots.clone());
            s.connected();
            s
        };
        let (mut s, mut other) = (mk(), mk());
        let t = drive(&mut s, 0, 300, |_| false);
        // Asked on a link that missed nothing: a burst at once, holding a slot.
        assert!(s.ask_burst(t));
        assert!(s.bursting(t) && s.bursting(t + 1_900 * MS) && !s.bursting(t + 2_001 * MS));
        assert_eq!((s.bursts(), s.asked_bursts(), slots.busy()), (1, 1, 1));
        // The other peer's ask finds no slot, and says so.
        assert!(!other.ask_burst(t));
        assert_eq!(other.bursts_refused().slots, 1);
        // Asked again while most of the burst is left: the evidence is on its way.
        assert!(!s.ask_burst(t + 500 * MS));
        // With half of it or less left, the next burst is chained onto it.
        assert!(s.ask_burst(t + 1_000 * MS));
        assert!(s.bursting(t + 3_900 * MS) && !s.bursting(t + 4_001 * MS));
        assert!(s.ask_burst(t + 3_000 * MS));
        // A fourth in a row is refused and counted: at most six seconds at ten times the rate.
        assert!(!s.ask_burst(t + 5_000 * MS));
        assert!(!s.bursting(t + 6_001 * MS));
        assert_eq!((s.asked_bursts(), s.bursts_refused().asked_limit), (3, 1));
        // The burst's last asks judged, the slot is free again.
        s.poll(t + 7_100 * MS);
        assert_eq!(slots.busy(), 0);
        // Still asked within a cooldown and a burst's length of the last asked burst: no.
        assert!(!s.ask_burst(t + 9_000 * MS));
        // After that a new run may start.
        assert!(s.ask_burst(t + 10_100 * MS));
        assert_eq!((s.bursts(), s.asked_bursts()), (4, 4));
        // Bursts turned off, or asks ignored by configuration: nothing.
        for (extra, asked_max) in [(0, 3), (9, 0)] {
            let mut cfg = SessionConfig::default();
            (cfg.burst.extra, cfg.burst.asked_max) = (extra, asked_max);
            let mut s = PeerSession::new(cfg, "a");
            s.connected();
            let t = drive(&mut s, 0, 50, |_| false);
            assert!(!s.ask_burst(t) && !s.bursting(t));
        }
    }

    /// A session with burst slots of its own (four), after 30 s of answered asks; the slots
    /// (to mark host stalls on) and the time after.
    fn warm_with_slots() -> (Arc<BurstSlots>, PeerSession, u64) {
        let slots = BurstSlots::new(4);
        let mut s = PeerSession::new(SessionConfig::default(), "a").with_burst_slots(slots.clone());
        s.connected();
        let t = drive(&mut s, 0, 300, |_| false);
        (slots, s, t)
    }

    #[test]
    fn a_miss_whose_ask_a_host_stall_held_starts_no_burst() {
        let fresh = warm_with_slots;
        let miss = |s: &mut PeerSession, at: u64| {
            let _ = s.next_datagram(at, true);
            let dl = s.next_deadline().expect("a pending ask has a deadline");
            s.poll(dl);
            dl
        };
        // A timer a few milliseconds late is a busy host, not a stall.
        let (slots, _, t) = fresh();
        assert!(!slots.timer_fired(t - 10 * MS, t - 5 * MS));
        // A stall that ended while the ask was in flight: its miss starts no burst.
        let (slots, mut s, t) = fresh();
        assert!(
            slots.timer_fired(t - 210 * MS, t + 20 * MS),
            "a 230 ms late timer is a stall"
        );
        let _ = miss(&mut s, t);
        assert_eq!(
            (s.bursts(), s.bursts_refused()),
            (
                0,
                BurstsRefused {
                    host_stall: 1,
                    ..BurstsRefused::default()
                }
            ),
            "a stall's miss burst"
        );
        // A stall that ended before the ask left says nothing about it: the miss bursts.
        let (slots, mut s, t) = fresh();
        assert!(slots.timer_fired(t - 830 * MS, t - 600 * MS));
        let _ = miss(&mut s, t);
        assert_eq!(
            (s.bursts(), s.bursts_refused()),
            (1, BurstsRefused::default()),
            "an older stall held a burst back"
        );
        // Misses a stall may have caused make no heal episode either.
        let k = BurstConfig::default().heal_after_losses;
        let (slots, mut s, mut t) = fresh();
        for _ in 0..k {
            assert!(slots.timer_fired(t - 210 * MS, t + 20 * MS));
            let dl = miss(&mut s, t);
            t = drive(&mut s, dl + 100 * MS, 20, |_| false);
        }
        let _ = drive(&mut s, t, 100, |_| false);
        assert_eq!(s.heal_bursts(), 0, "the losses of stalls made a heal burst");
        // The same misses without the stalls do.
        let (_, mut s, mut t) = fresh();
        for _ in 0..k {
            let dl = miss(&mut s, t);
            t = drive(&mut s, dl + 100 * MS, 20, |_| false);
        }
        let _ = drive(&mut s, t, 100, |_| false);
        assert_eq!(s.heal_bursts(), 1);
    }

    #[test]
    fn a_run_of_misses_a_host_stall_held_declares_no_down_and_a_dead_link_is_seen_a_run_later() {
        let fresh = warm_with_slots;
        // From `t0` the link is dark; asks every 50 ms (as the shell asks again after a
        // miss). `stall(t)`: a timer due at `t` that fired 100 ms late. Returns how long until
        // `Down`.
        let dark = |s: &mut PeerSession, slots: &BurstSlots, t0: u64, stall: Option<u64>| {
            let mut t = t0;
            loop {
                let _ = s.next_datagram(t, true);
                t += 50 * MS;
                if let Some(at) = stall.filter(|&at| at <= t && at + 50 * MS > t) {
                    slots.timer_fired(at, at + 100 * MS);
                }
                if s.poll(t) == Some(LivenessEvent::Down) {
                    return t - t0;
                }
                assert!(t - t0 < 10_000 * MS, "never down");
            }
        };
        let (slots, mut s, t) = fresh();
        let plain = dark(&mut s, &slots, t, None);
        assert_eq!(s.downs_held(), 0);
        // The host stalled while the run's asks were in flight: that run declares nothing,
        // and the dead link is declared by the next.
        let (slots, mut s, t) = fresh();
        let held = dark(&mut s, &slots, t, Some(t + 100 * MS));
        assert_eq!(s.downs_held(), 1);
        assert!(held > plain, "down after {held} ns, as soon as without the stall");
        assert!(
            held <= 3 * plain,
            "down after {held} ns, {plain} ns without the stall"
        );
        // A stall long before the run says nothing about it.
        let (slots, mut s, t) = fresh();
        assert!(slots.timer_fired(t - 3_000 * MS, t - 2_900 * MS));
        assert_eq!(dark(&mut s, &slots, t, None), plain);
        assert_eq!(s.downs_held(), 0);
    }

    #[test]
    fn a_random_miss_at_the_noise_floor_does_not_stop_the_next_burst() {
        // One ask in 250 lost (a mesh losing 0.1% each way, and the odd late echo), the last
        // one just before a second miss 5.1 s later (past the cooldown) — a brown-out's first,
        // perhaps. The 200-ask miss rate is still over 0.5% then; the link's is 0.4%.
        let mut s = session();
        let t = drive(&mut s, 0, 3000, |i| i % 250 == 249);
        let before = s.bursts();
        assert!(before > 0);
        let _ = drive(&mut s, t, 100, |i| i == 50);
        assert_eq!(s.bursts(), before + 1, "the second miss did not burst");
    }

    /// Drives a 40 ms link for `ms` milliseconds from `t` like the shell does: a regular ask
    /// every 100 ms and, while a burst runs, four extra asks between them; ask number `k` of
    /// the run goes unechoed when `lost(k)`. Returns the time at the end.
    fn drive_bursting(s: &mut PeerSession, t: u64, ms: u64, lost: impl Fn(u64) -> bool) -> u64 {
        let mut arrivals: VecDeque<(u64, u32)> = VecDeque::new();
        let mut k = 0;
        for step in 0..ms / 20 {
            let now = t + step * 20 * MS;
            while arrivals.front().is_some_and(|&(at, _)| at <= now) {
                let Some((at, seq)) = arrivals.pop_front() else {
                    break;
                };
                feed(s, &from_peer((at / MS) as u32, ANSWER, &[(seq, 0)]), at);
            }
            let p = if step % 5 == 0 {
                s.next_datagram(now, true)
            } else if s.bursting(now) {
                s.next_extra_ask(now)
            } else {
                s.poll(now);
                continue;
            };
            if !lost(k) {
                arrivals.push_back((now + 40 * MS, p.seq));
            }
            k += 1;
            s.poll(now);
        }
        t + ms * MS
    }

    /// A fixed, well-spread pattern of losses at `rate`: whether ask `k` is lost.
    fn spread_loss(rate: f64) -> impl Fn(u64) -> bool {
        move |k| (k.wrapping_mul(2_654_435_761) % 10_007) as f64 / 10_007.0 < rate
    }

    #[test]
    fn a_brown_out_keeps_bursting_until_the_regular_asks_show_it() {
        // Forty clean seconds but for one random miss, then 5% loss. The first burst's misses
        // are five times as many as the regular asks' (a burst samples the brown-out five
        // times over): counted in the long-run rate, they closed the gate after one burst,
        // and a brown-out whose one burst was unlucky waited for ten samples a second. The
        // regular asks alone close it within seconds too (here five misses in six seconds);
        // the gate reads the rate as it was 10 to 20 s before.
        let mut s = session();
        let t = drive_bursting(&mut s, 0, 40_000, |k| k == 200);
        let before = s.bursts();
        assert_eq!(before, 1);
        let _ = drive_bursting(&mut s, t, 12_000, spread_loss(0.05));
        assert!(
            s.bursts() >= before + 2,
            "{} bursts in 12 s of a brown-out",
            s.bursts() - before
        );
    }

    #[test]
    fn a_young_link_with_a_few_random_misses_still_bursts() {
        // Three misses in the first 400 asks: a plain mean reads 0.75%, a lossy link; with
        // the presumed clean history, 0.43%.
        let mut s = session();
        let t = drive(&mut s, 0, 400, |i| i % 100 == 0 && i > 0);
        // Onset bursts only (the misses are an episode: a heal burst may follow them).
        let onset = |s: &PeerSession| s.bursts() - s.heal_bursts();
        let before = onset(&s);
        let _ = drive(&mut s, t, 100, |i| i == 5);
        assert_eq!(onset(&s), before + 1, "the third miss did not burst");
    }

    #[test]
    fn a_link_known_to_be_lossy_does_not_burst() {
        let mut s = session();
        // 5% of asks lost for 40 s: the miss rate is far above the threshold.
        let t = drive(&mut s, 0, 400, |i| i % 20 == 7);
        let (before, refused) = (s.bursts(), s.bursts_refused().lossy);
        let _ = drive(&mut s, t, 100, |i| i % 20 == 7);
        assert_eq!(s.bursts(), before, "a lossy link kept bursting");
        // Each of its misses is counted as a burst held back for it.
        assert_eq!(s.bursts_refused().lossy, refused + 5, "{:?}", s.bursts_refused());
    }

    #[test]
    fn bursts_can_be_turned_off() {
        let mut cfg = SessionConfig::default();
        cfg.burst.extra = 0;
        let mut s = PeerSession::new(cfg, "a");
        s.connected();
        let _ = drive(&mut s, 0, 300, |i| i == 250);
        assert_eq!(s.bursts(), 0);
    }
}
