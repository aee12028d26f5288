//! Axon's controller: measurements in, route tables out.
//!
//! [`core::Core`] holds every decision (through `topology`) and is tested without I/O; the
//! shell ([`daemon`], [`services`], [`http`]) ingests prober reports, runs the compute loop,
//! streams each site's table to its agents, and serves the admin API behind `axonctl`.
//! [`store::Store`] is the seam for durable state: the embedded store today, etcd for high
//! availability.

pub mod auth;
pub mod config;
pub mod core;
pub mod daemon;
pub mod error;
pub mod ha;
pub mod http;
pub mod journal;
pub mod metrics;
pub mod services;
pub mod store;
pub mod watch;

pub use config::{ControllerConfig, SiteConfig, StoreConfig};
pub use daemon::{ControllerHandle, start};
pub use error::ControllerError;
