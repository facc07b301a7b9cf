#!/usr/bin/env bash
# Benchmarks ferrokube's components against their upstream peers (same machine, same run),
# one line per figure with the ratio ferrokube/upstream.
#
#   hack/bench.sh controller-manager [--replicas N] [--limits 20/30 --limits 500/500]
#   hack/bench.sh ingress [--duration-seconds 10] [--routes 1000 --routes 5000]
#   hack/bench.sh kubelet [--singles 20] [--batch 100]      (as root)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=lib.sh
source hack/lib.sh
bin_dir=$(hack/provision.sh | tail -n 1)
export FERROKUBE_BIN_DIR=$bin_dir
cargo build --release --bins --quiet
exec "$CARGO_TARGET_DIR/release/ferrokube-bench" "$@"
