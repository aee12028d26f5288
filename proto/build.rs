//! Generates the axon.v1 messages and services with protoc (Debian: `protobuf-compiler`; the
//! project's scripts install it when missing).
//!
//! The controller serves `RouteDistribution.Watch` by hand over pre-encoded updates (see
//! `wire` and the controller's `watch` module); everything else is tonic's generated code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "axon/v1/probe.proto",
        "axon/v1/routes.proto",
        "axon/v1/admin.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["."])?;

    Ok(())
}
