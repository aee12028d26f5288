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

/// The route distribution server over pre-encoded updates (see [`wire`]): what the
/// controller serves. Clients use [`v1`]; the bytes on the wire are the same.
pub mod fast {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/fast/axon.v1.rs"));
}

pub mod wire;
