//! Where the controller keeps what must survive a restart: drains and the version counter.
//!
//! `Store` is the seam between the compute loop and its storage: the embedded store
//! (memory, plus an optional snapshot file) serves a single controller; an etcd store with
//! leader election and fenced writes will implement the same trait for high availability.

use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use topology::Drain;

use crate::error::ControllerError;

/// Everything persisted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Fencing epoch of the tables this controller publishes.
    pub epoch: u64,
    /// The last version published: a restarted controller continues after it.
    pub last_version: u64,
    /// Drains in force, operator and automatic.
    pub drains: Vec<Drain>,
}

/// Durable controller state.
pub trait Store: Send + Sync {
    /// The last saved snapshot (empty on first start).
    fn load(&self) -> Result<Snapshot, ControllerError>;
    /// Saves a snapshot; when this returns, it survives a crash.
    fn save(&self, snapshot: &Snapshot) -> Result<(), ControllerError>;
}

/// The embedded store: memory, mirrored to a snapshot file when one is configured.
#[derive(Debug, Default)]
pub struct MemoryStore {
    current: Mutex<Snapshot>,
    file: Option<PathBuf>,
}

impl MemoryStore {
    /// A store mirrored to `file` (read now if it exists).
    pub fn open(file: Option<PathBuf>) -> Result<Self, ControllerError> {
        let current = match &file {
            Some(path) if path.exists() => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ControllerError::Store(format!("{}: {e}", path.display())))?;
                serde_json::from_str(&text)
                    .map_err(|e| ControllerError::Store(format!("{}: {e}", path.display())))?
            }
            _ => Snapshot::default(),
        };
        Ok(MemoryStore {
            current: Mutex::new(current),
            file,
        })
    }
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Snapshot, ControllerError> {
        Ok(self.current.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn save(&self, snapshot: &Snapshot) -> Result<(), ControllerError> {
        if let Some(path) = &self.file {
            let json =
                serde_json::to_vec_pretty(snapshot).map_err(|e| ControllerError::Store(e.to_string()))?;
            ops::write_atomically(path, &json)
                .map_err(|e| ControllerError::Store(format!("{}: {e}", path.display())))?;
        }
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = snapshot.clone();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use topology::{DrainOrigin, DrainTarget, SiteId};

    #[test]
    fn a_snapshot_survives_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let store = MemoryStore::open(Some(path.clone())).unwrap();
        assert_eq!(store.load().unwrap(), Snapshot::default());
        let snap = Snapshot {
            epoch: 1,
            last_version: 42,
            drains: vec![Drain {
                target: DrainTarget::Site(SiteId::new("a").unwrap()),
                reason: "maintenance".into(),
                author: "ops".into(),
                at_ms: 5,
                origin: DrainOrigin::Operator,
                forced: false,
            }],
        };
        store.save(&snap).unwrap();
        assert_eq!(
            MemoryStore::open(Some(path.clone())).unwrap().load().unwrap(),
            snap
        );
        // A corrupt file is an error, not an empty state.
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(MemoryStore::open(Some(path)).is_err());
    }
}
