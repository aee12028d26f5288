//! The emulator's one error type.

/// What the emulator can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum WanError {
    /// A socket could not be created or configured.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// Link parameters out of range.
    #[error("invalid {field}: {detail}")]
    InvalidParams {
        /// The parameter.
        field: &'static str,
        /// Why.
        detail: String,
    },
    /// The emulator has been shut down.
    #[error("the emulator has shut down")]
    Stopped,
}
