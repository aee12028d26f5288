//! The controller's one error type.

use topology::TopologyError;

/// What went wrong in the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// A routing decision refused the input (unknown site, guardrail, bad value…).
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A report or request that does not parse into the model.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// Why.
        detail: String,
    },
    /// A report refused at ingest; `reason` is the counter label.
    #[error("rejected ({reason}): {detail}")]
    Rejected {
        /// A short, stable label: `unknown_site`, `invalid`, `future`, `replay`, `self_link`,
        /// `malformed`.
        reason: &'static str,
        /// What was wrong, for the log.
        detail: String,
    },
    /// The store could not be read or written.
    #[error("store: {0}")]
    Store(String),
    /// A write refused because this replica no longer leads (a newer leader holds the
    /// fencing key): nothing it computed may be published.
    #[error("fenced: this controller is no longer the leader")]
    Fenced,
    /// A socket could not be opened or served.
    #[error("{context}: {detail}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        detail: String,
    },
}

impl ControllerError {
    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        ControllerError::Io {
            context: context.into(),
            detail: e.to_string(),
        }
    }
}
