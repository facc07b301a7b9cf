#!/usr/bin/env bash
# Runs every test: formatting and lints, unit tests, and the tests against a real
# kube-apiserver + etcd (and, where a feature touches them, real runc, CNI and registry).
# The first run installs what the tests need; later runs reuse the cache.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=lib.sh
source hack/lib.sh

bin_dir=$(hack/provision.sh | tail -n 1)
export FERROKUBE_BIN_DIR=$bin_dir

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Each test starts its own control plane on its own ports; two at a time fit 2 cores.
cargo test --workspace --no-fail-fast -- --test-threads="${FERROKUBE_TEST_THREADS:-2}"
