#!/usr/bin/env bash
# The test command: formatting, lints, then every test of the workspace.
# Installs what the build needs when it is missing (run as root on Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust_components
ensure_packages protobuf-compiler libprotobuf-dev etcd-server prometheus
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
