//! The prober's one error type.

/// Why a datagram was refused. Each variant is also a counter label (see [`WireError::label`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
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
}

impl WireError {
    /// A short, stable label for the `reason` of a drop counter.
    pub fn label(&self) -> &'static str {
        match self {
            WireError::Truncated(_) => "truncated",
            WireError::Oversized(_) => "oversized",
            WireError::Foreign => "foreign",
            WireError::Version(_) => "version",
            WireError::Kind(_) => "kind",
            WireError::Site => "site",
            WireError::Trailing => "trailing",
        }
    }
}
