//! Axon's agent: one per media node. It follows a controller's `Watch` stream, validates each
//! update ([`table`]), applies it atomically, keeps it on disk as last-known-good
//! ([`persist`]), and answers the media server on a loopback HTTP API ([`http`]). Losing the
//! control plane never takes routes away: the table held stays in force, and on start the
//! last-known-good table is served before any controller answers.

pub mod config;
pub mod daemon;
pub mod error;
pub mod http;
pub mod persist;
pub mod table;

pub use config::AgentConfig;
pub use daemon::{AgentHandle, start};
pub use error::AgentError;
