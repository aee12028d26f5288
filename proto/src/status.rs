//! What a valid node status report is: checked the same way where it enters (the agent's
//! `PUT /v1/status`) and where it arrives (the controller's watch stream), and the checked
//! value both keep.

use crate::v1::NodeStatus;

/// The most sessions one node is believed to carry; more is a unit mix-up, not a load.
pub const MAX_SESSIONS: u32 = 10_000_000;

/// Checks a report: `load` a share of capacity (0 to 1), `sessions` at most [`MAX_SESSIONS`].
///
/// # Errors
/// `(reason, detail)`: the reason (`load` or `sessions`) is a counter label, the detail a
/// sentence for the caller.
pub fn check(sessions: u32, load: f64) -> Result<(), (&'static str, String)> {
    if !load.is_finite() || !(0.0..=1.0).contains(&load) {
        return Err((
            "load",
            format!("load {load}: must be a share of capacity, 0 to 1"),
        ));
    }
    if sessions > MAX_SESSIONS {
        return Err((
            "sessions",
            format!("sessions {sessions}: more than {MAX_SESSIONS} on one node"),
        ));
    }
    Ok(())
}

/// A node's load as its media server reported it, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeLoad {
    /// Sessions the node carries.
    pub sessions: u32,
    /// Share of the node's capacity in use, 0..=1.
    pub load: f64,
    /// When the report was taken (by the agent) or received (by the controller), Unix ms.
    pub at_ms: u64,
}

impl NodeLoad {
    /// Checks a report (see [`check`]).
    ///
    /// # Errors
    /// As [`check`].
    pub fn new(sessions: u32, load: f64, at_ms: u64) -> Result<Self, (&'static str, String)> {
        check(sessions, load)?;
        Ok(NodeLoad {
            sessions,
            load,
            at_ms,
        })
    }

    /// The wire form the agent sends.
    pub fn to_wire(&self) -> NodeStatus {
        NodeStatus {
            sessions: self.sessions,
            load: self.load,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_are_shares_and_sessions_are_bounded() {
        assert!(check(0, 0.0).is_ok() && check(MAX_SESSIONS, 1.0).is_ok());
        assert_eq!(check(1, 1.01).map_err(|e| e.0), Err("load"));
        assert_eq!(check(1, -0.01).map_err(|e| e.0), Err("load"));
        assert_eq!(check(1, f64::NAN).map_err(|e| e.0), Err("load"));
        assert_eq!(check(MAX_SESSIONS + 1, 0.5).map_err(|e| e.0), Err("sessions"));
    }
}
