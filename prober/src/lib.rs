//! Axon's prober: honest link measurements over QUIC.
//!
//! The pure parts — the datagram format ([`wire`]), one peer's probing state ([`session`]),
//! windows ([`window`]) and fast liveness ([`liveness`]) — take time as a parameter and are
//! tested with a simulated clock. The async shell ([`daemon`], with [`tls`], [`congestion`], [`report`],
//! [`metrics`] and [`http`]) only moves bytes and timers around them.

pub mod config;
pub mod congestion;
pub mod daemon;
pub mod error;
pub mod http;
pub mod liveness;
pub mod metrics;
pub mod report;
pub mod session;
pub mod tls;
pub mod window;
pub mod wire;

pub use config::{PeerConfig, ProberConfig, ReportConfig};
pub use daemon::{Cause, Output, PeerLiveness, PeerWindow, PeersReloaded, ProberHandle, start};
pub use error::ProberError;
pub use liveness::{Liveness, LivenessConfig, LivenessEvent};
pub use session::{BurstSlots, BurstsRefused, EchoKind, EchoOutcome, PeerSession, Refused, SessionConfig};
pub use tls::TlsFiles;
pub use window::{Window, WindowReport, wilson};
pub use wire::{Datagram, Echo, MAX_PROBE, site_tag};
