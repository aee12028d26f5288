//! The `axon.v1` wire contract shared by every Axon process.
//!
//! Generated at build time from `proto/axon/v1/*.proto`; the compatibility rules are in
//! `proto/README.md`. Conversions to and from the `topology` model live with the daemons that
//! need them, so this crate stays a plain contract.

/// Version 1 of the Axon protocol.
pub mod v1 {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("axon.v1");
}

pub mod auth;
pub mod status;
pub mod wire;
