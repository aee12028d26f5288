#!/usr/bin/env bash
# The main job: the lab. Runs a whole Axon mesh on this machine (a controller, one prober and
# one agent per site, the userspace WAN emulator between every pair) from a scenario of real
# measured latencies with faults on a timeline, and prints how Axon did.
#   ./scripts/lab.sh                                   # lab/scenarios/quick-6.toml, under a minute
#   ./scripts/lab.sh lab/scenarios/other.toml --report report.json
# Installs what the build needs when it is missing (run as root on Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_packages protobuf-compiler libprotobuf-dev etcd-server
scenario="${1:-lab/scenarios/quick-6.toml}"
shift || true
cargo build --release --locked -q -p axon-lab
exec target/release/axon-lab --scenario "$scenario" "$@"
