//! Axon's prober: honest link measurements over QUIC.
//!
//! The pure parts — the datagram format ([`wire`]), one peer's probing state ([`session`]),
//! windows ([`window`]) and fast liveness ([`liveness`]) — take time as a parameter and are
//! tested with a simulated clock. The async shell only
//! moves bytes and timers around them.

pub mod error;
pub mod liveness;
pub mod session;
pub mod window;
pub mod wire;

pub use error::WireError;
pub use liveness::{Liveness, LivenessConfig, LivenessEvent};
pub use session::{PeerSession, Refused, ReplyKind, ReplyOutcome, SessionConfig};
pub use window::{Window, WindowReport, wilson};
pub use wire::{Kind, MAX_PROBE, Probe};
