//! The probing connection's congestion window: fixed, never cut by loss.
//!
//! Probing is application-limited: a fixed, small rate set by the probe interval and the
//! evidence bursts (at most ten times it, for seconds), so there is no flow to tame, and the
//! measurement must not react to what it measures. A loss-based controller (quinn's default,
//! CUBIC) reads every loss event as congestion and cuts its window, and an application-limited
//! flow never grows it back: after enough of the mesh's random losses a link's window sits
//! near its floor of two packets, and on a long link an evidence burst can then wait in
//! quinn's queue, leave in packets holding several probes (one lost packet becomes several
//! lost probes, losses the change test takes for independent) and add its wait to the round
//! trips. On the lab's 25-site mesh (one run each with seeds 4 and 5), windows with three or
//! more losses on links that lose 0.2% were seen on 11–12 links a run instead of 18–20, and
//! pairs within 2% of the best path went from 99.62–99.63% to 99.98–99.99%; the lab's CPU
//! stayed within its run-to-run spread (111–127 s). The window still bounds the bytes in
//! flight.

use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

use quinn::congestion::{Controller, ControllerFactory};

/// Default bytes in flight a probing connection may have: 64 KiB, some 600 probes, far above
/// what a probe rate and its bursts send in one round trip.
pub const DEFAULT_WINDOW: u64 = 64 * 1024;

/// Builds [`FixedWindow`] controllers for quinn's transport config.
#[derive(Debug, Clone)]
pub struct FixedWindowConfig {
    /// Bytes in flight allowed; default [`DEFAULT_WINDOW`].
    pub window: u64,
}

impl Default for FixedWindowConfig {
    fn default() -> Self {
        Self {
            window: DEFAULT_WINDOW,
        }
    }
}

impl ControllerFactory for FixedWindowConfig {
    fn build(self: Arc<Self>, _now: Instant, _current_mtu: u16) -> Box<dyn Controller> {
        Box::new(FixedWindow { window: self.window })
    }
}

/// A congestion controller whose window never moves: loss is what the prober measures, not a
/// signal for it to send less.
#[derive(Debug, Clone)]
pub struct FixedWindow {
    window: u64,
}

impl Controller for FixedWindow {
    fn on_congestion_event(
        &mut self,
        _now: Instant,
        _sent: Instant,
        _is_persistent_congestion: bool,
        _lost_bytes: u64,
    ) {
    }

    fn on_mtu_update(&mut self, _new_mtu: u16) {}

    fn window(&self) -> u64 {
        self.window
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        self.window
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_and_persistent_congestion_leave_the_window_where_it_was() {
        let now = Instant::now();
        let mut c = Arc::new(FixedWindowConfig { window: 10_000 }).build(now, 1200);
        assert_eq!((c.initial_window(), c.window()), (10_000, 10_000));
        c.on_congestion_event(now, now, false, 1_200);
        c.on_congestion_event(now, now, true, 50_000);
        c.on_mtu_update(1_400);
        assert_eq!(c.window(), 10_000);
        assert_eq!(c.clone_box().window(), 10_000);
    }
}
