//! # A userspace WAN emulator
//!
//! This machine's kernel has no `netem`, and Axon's probers, lab and integration tests need
//! real networks with real delay, jitter, loss, outages and bandwidth limits. `wan` provides
//! them in userspace: a [`Pipe`] is a UDP relay on loopback between a client and a server, each
//! direction shaped by its own [`LinkParams`], which can change while traffic flows.
//!
//! - [`shaper`] decides each packet's fate (pure: time and randomness are parameters);
//! - receive tasks time each packet from its kernel arrival stamp ([`stamp`]), so their own
//!   wake-up latency is not added to the emulated delay;
//! - the sender thread (`scheduler`) sends each packet at its instant to a fraction of a
//!   millisecond, sleeping first and spinning for the last stretch (or, without a spin,
//!   waking early by its own learnt wake-up lateness);
//! - [`Emulator`] and [`Pipe`] wire sockets, Tokio receive tasks and the sender together.

pub mod error;
pub mod params;
pub mod pipe;
mod scheduler;
pub mod shaper;
pub mod stamp;

pub use error::WanError;
pub use params::{GilbertElliott, JitterDist, LinkParams};
pub use pipe::{DirectionStats, Emulator, EmulatorConfig, Pipe, Way, symmetric};
pub use scheduler::DepartureOffsets;
pub use shaper::{DropReason, Fate, Shaper};
