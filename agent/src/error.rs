//! The agent's one error type.

/// What went wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A route update that must not be applied; the message goes back in the NACK.
    #[error("invalid update: {0}")]
    Invalid(String),
    /// An update older than (or equal to) the table held.
    #[error("stale update {got:?}: holding {held:?}")]
    Stale {
        /// `(epoch, version)` received.
        got: (u64, u64),
        /// `(epoch, version)` held.
        held: (u64, u64),
    },
    /// The last-known-good file could not be read or written.
    #[error("last-known-good: {0}")]
    Persist(String),
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// A socket could not be opened.
    #[error("{context}: {detail}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        detail: String,
    },
}
