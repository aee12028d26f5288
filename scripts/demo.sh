#!/usr/bin/env bash
# A tour of Axon's routing engine alone on a real measured matrix (data/aws-2025 by
# default; pass another data folder, e.g. data/azure-2025).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-data/aws-2025}"
exec cargo run --release --locked -q -p axon-topology --example demo -- "$(realpath "$data")"
