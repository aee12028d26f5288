//! The lab's one error type.

/// What went wrong in the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The scenario (or a data file it names) is invalid.
    #[error("{file}: {detail}")]
    Scenario {
        /// The file at fault.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// A data file failed to parse (the message names file and line).
    #[error(transparent)]
    Data(#[from] topology::TopologyError),
    /// A part of the mesh failed to start or run.
    #[error("{0}")]
    Run(String),
}
