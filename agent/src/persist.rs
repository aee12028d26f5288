//! The last-known-good table on disk: written atomically after every apply, read at start so
//! that a restarted agent serves routes before any controller answers.

use std::path::Path;

use prost::Message;
use proto::v1 as pb;

use crate::error::AgentError;
use crate::table::{Table, validate};

/// Writes the table atomically (see [`ops::write_atomically`]): a crash leaves the old table
/// or the new one, never a torn file.
pub fn save(path: &Path, t: &Table) -> Result<(), AgentError> {
    // 8 bytes of applied time, then the update as protobuf.
    let mut bytes = t.applied_unix_ms.to_be_bytes().to_vec();
    t.update
        .encode(&mut bytes)
        .map_err(|e| AgentError::Persist(e.to_string()))?;
    ops::write_atomically(path, &bytes).map_err(|e| AgentError::Persist(format!("{}: {e}", path.display())))
}

/// Reads the table back and validates it again (a file is input like any other). `Ok(None)`
/// when there is none.
pub fn load(path: &Path, site: &str) -> Result<Option<Table>, AgentError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AgentError::Persist(format!("{}: {e}", path.display()))),
    };
    if bytes.len() < 8 {
        return Err(AgentError::Persist(format!("{}: truncated", path.display())));
    }
    let applied = u64::from_be_bytes(
        bytes[..8]
            .try_into()
            .map_err(|_| AgentError::Persist("truncated".into()))?,
    );
    let update = pb::RouteUpdate::decode(&bytes[8..])
        .map_err(|e| AgentError::Persist(format!("{}: {e}", path.display())))?;
    let mut t = validate(update, site, None, applied)?;
    t.applied_unix_ms = applied;
    Ok(Some(t))
}
