//! Generates the axon.v1 messages and services with protoc (Debian: `protobuf-compiler`; the
//! project's scripts install it when missing).
//!
//! The route distribution server is generated a second time (`fast`), with `RouteUpdate`
//! mapped to `wire::EncodedRouteUpdate`: the controller encodes each site's update once and
//! every watch stream of that site sends the same bytes.

use std::path::PathBuf;

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

    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("fast");
    std::fs::create_dir_all(&out)?;
    let mut fast = tonic_prost_build::configure().build_client(false).out_dir(&out);
    for m in [
        "AgentMessage",
        "TableVersion",
        "AgentHello",
        "Ack",
        "Nack",
        "NodeStatus",
        "RoutePath",
        "RouteRow",
        "DrainEntry",
    ] {
        fast = fast.extern_path(format!(".axon.v1.{m}"), format!("crate::v1::{m}"));
    }
    fast = fast.extern_path(".axon.v1.RouteUpdate", "crate::wire::EncodedRouteUpdate");
    fast.compile_protos(&["axon/v1/routes.proto"], &["."])?;
    Ok(())
}
