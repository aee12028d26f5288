//! # Axon's routing engine
//!
//! Every decision Axon makes — which path each pair of data centers uses, when to switch, what
//! to drain — is a plain function in this crate: no I/O, no async, no clock (time is a
//! parameter), so that each decision is deterministic and tested in microseconds. The
//! daemons are thin shells around it.
//!
//! The flow of one computation:
//! [`LinkState`] per link (fed by probe windows and liveness events) → a [`World`] snapshot →
//! a dense [`CostMatrix`] → [`compute_routes`] (primaries, backups, hysteresis) → an immutable,
//! versioned [`RouteTable`], diffed against the last and sliced per site for the agents.
//! [`RouteEngine`] runs that flow and keeps what must survive between computations.
//! Drains and their guardrails live in [`drain`]; what-if analysis in [`whatif`].

pub mod cost;
pub mod data;
pub mod drain;
pub mod engine;
pub mod error;
pub mod hysteresis;
mod kernels;
pub mod link;
pub mod locality;
pub mod matrix;
pub mod path;
pub mod paths;
pub mod site;
pub mod table;
pub mod whatif;
pub mod world;

pub use cost::{CostWeights, LinkMetrics, PriceBook, Quality};
pub use drain::{
    AutoDrainConfig, AutoDrainPolicy, AutoMode, Drain, DrainOrigin, DrainRequest, DrainSet, DrainTarget,
    Guardrail, GuardrailConfig, site_health,
};
pub use engine::{Computation, EngineConfig, RefreshConfig, RouteEngine};
pub use error::TopologyError;
pub use hysteresis::{HysteresisConfig, HysteresisState, SwitchReason, VoiceThresholds};
pub use link::{
    LinkHealth, LinkState, LinkStateConfig, LinkView, LinkWindow, Liveness, MAX_WINDOW_PROBES, Pool,
    TimestampMs,
};
pub use matrix::CostMatrix;
pub use path::Path;
pub use paths::{
    Compared, PairRoute, PathConfig, Reason, Routes, Scratch, compute_routes, compute_routes_in,
};
pub use site::{Inventory, RegionId, Role, Site, SiteId, SiteIdx};
pub use table::{
    Epoch, PrimaryChanges, RouteEntry, RouteTable, RowChange, SiteTable, TableDiff, TableId, TableSummary,
    Version,
};
pub use whatif::{Change, WhatIfReport, what_if};
pub use world::{HealthCounts, LinkTable, World};
