//! The prober's one error type: refused datagrams and start-up failures.

/// What went wrong. Datagram variants are also drop-counter labels (see [`ProberError::label`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProberError {
    /// Shorter than the fixed header.
    #[error("truncated datagram ({0} bytes)")]
    Truncated(usize),
    /// Larger than any probe we send.
    #[error("oversized datagram ({0} bytes)")]
    Oversized(usize),
    /// Does not start with the probe format byte: not ours.
    #[error("foreign datagram (not an Axon probe)")]
    Foreign,
    /// A format version we do not speak.
    #[error("unsupported probe version {0}")]
    Version(u8),
    /// Flag bits this version does not define.
    #[error("unknown probe flags {0:#04x}")]
    Flags(u8),
    /// Bytes after the header that do not make whole echoes.
    #[error("trailing bytes after the probe's echoes")]
    Trailing,
    /// Certificates or keys could not be loaded or do not fit together.
    #[error("tls: {0}")]
    Tls(String),
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(String),
    /// A socket could not be opened or served.
    #[error("{context}: {detail}")]
    Io {
        /// What was being done.
        context: String,
        /// The operating system's error.
        detail: String,
    },
}

impl ProberError {
    /// A short, stable label for the `reason` of a drop counter.
    pub fn label(&self) -> &'static str {
        match self {
            ProberError::Truncated(_) => "truncated",
            ProberError::Oversized(_) => "oversized",
            ProberError::Foreign => "foreign",
            ProberError::Version(_) => "version",
            ProberError::Flags(_) => "flags",
            ProberError::Trailing => "trailing",
            ProberError::Tls(_) => "tls",
            ProberError::Config(_) => "config",
            ProberError::Io { .. } => "io",
        }
    }

    /// An I/O error with what was being done.
    pub fn io(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        ProberError::Io {
            context: context.into(),
            detail: e.to_string(),
        }
    }
}
