//! The lab: a whole Axon mesh on one machine, from a scenario file of measured latencies and a
//! fault timeline, with a report of how Axon did.

pub mod error;
pub mod live;
pub mod report;
pub mod run;
pub mod scenario;
pub mod targets;

pub use error::LabError;
pub use report::Report;
pub use run::{Options, run};
pub use scenario::{Fault, FaultKind, Scenario};
pub use targets::{TargetCheck, Targets};
