//! The prober's one error type: refused datagrams and start-up failures.

/// What went wrong. Datagram variants are also drop-counter labels (see [`ProberError::label`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProberError {
    /// Shorter than the fixed header, or its declared site id runs past the end.
    #[error("truncated datagram ({0} bytes)")]
    Truncated(usize),
    /// Larger than any probe we send.
    #[error("oversized datagram ({0} bytes)")]
    Oversized(usize),
    /// Does not start with the probe magic: not ours.
    #[error("foreign datagram (bad magic)")]
    Foreign,
    /// A format version we do not speak.
    #[error("unsupported probe version {0}")]
    Version(u8),
    /// Neither a probe nor a reply.
    #[error("unknown probe kind {0}")]
    Kind(u8),
    /// The sender site id is not a valid id.
    #[error("invalid sender site id")]
    Site,
    /// Bytes after the site id.
    #[error("trailing bytes after the probe")]
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
            ProberError::Kind(_) => "kind",
            ProberError::Site => "site",
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
