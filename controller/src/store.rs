//! Where the controller keeps what must survive a restart: drains and the version counter.
//!
//! `Store` is the seam between the compute loop and its storage: the embedded store
//! (memory, plus an optional snapshot file) serves a single controller; an etcd store with
//! leader election and fenced writes will implement the same trait for high availability.

use std::path::PathBuf;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use topology::{Drain, DrainOrigin, DrainTarget, TimestampMs};

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
    /// The drain log, oldest first: the last `drain_log_rows` drains, undrains and refused
    /// drains (absent in the state of an older controller: an empty log).
    #[serde(default)]
    pub drain_log: Vec<DrainEvent>,
}

/// What a drain action did ([`DrainEvent::action`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainAction {
    /// A drain was recorded.
    Drained,
    /// A drain was lifted.
    Undrained,
    /// A guardrail refused a drain; nothing changed.
    Refused,
}

impl DrainAction {
    /// Its name on the wire and in `axonctl drains --history`.
    pub fn label(self) -> &'static str {
        match self {
            DrainAction::Drained => "drained",
            DrainAction::Undrained => "undrained",
            DrainAction::Refused => "refused",
        }
    }
}

/// One drain action, for the audit trail (`axonctl drains --history`): who drained, undrained
/// or was refused what, when and why. The drains in force say only what holds now; a lifted
/// drain, or the refusal an operator met at night, is otherwise gone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainEvent {
    /// When.
    pub at_ms: TimestampMs,
    /// What happened.
    pub action: DrainAction,
    /// The site or region.
    pub target: DrainTarget,
    /// Who acted: a person, or `auto` for the automatic policy.
    pub author: String,
    /// Operator or automatic.
    pub origin: DrainOrigin,
    /// The drain's reason (for an undrain, the reason of the drain it lifted).
    pub reason: String,
    /// A guardrail was overridden with `--force`.
    pub forced: bool,
    /// Refused: the rule and its explanation; forced: the rules overridden; undrained: whose
    /// drain was lifted and after how long.
    #[serde(default)]
    pub detail: String,
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
    use topology::SiteId;

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
                until_ms: Some(7_200_005),
            }],
            drain_log: vec![DrainEvent {
                at_ms: 6,
                action: DrainAction::Refused,
                target: DrainTarget::Region(topology::RegionId::new("eu").unwrap()),
                author: "bob".into(),
                origin: DrainOrigin::Operator,
                reason: "test".into(),
                forced: false,
                detail: "min_active_regions: …".into(),
            }],
        };
        store.save(&snap).unwrap();
        assert_eq!(
            MemoryStore::open(Some(path.clone())).unwrap().load().unwrap(),
            snap
        );
        // The state of a controller without a drain log reads as an empty log.
        std::fs::write(&path, br#"{"epoch": 1, "last_version": 3, "drains": []}"#).unwrap();
        let old = MemoryStore::open(Some(path.clone())).unwrap().load().unwrap();
        assert_eq!((old.last_version, old.drain_log.len()), (3, 0));
        // A corrupt file is an error, not an empty state.
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(MemoryStore::open(Some(path)).is_err());
    }
}
