#!/usr/bin/env bash
# The local cluster, in one command. The first run installs what it needs (Debian packages,
# upstream binaries built from Go modules, ferrokube's binaries); later runs reuse the cache.
#
#   hack/local-cluster.sh up       start it (default) and print the kubeconfig path
#   hack/local-cluster.sh status   what is running
#   hack/local-cluster.sh down     stop it
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cmd=${1:-up}
[ $# -gt 0 ] && shift
# shellcheck source=lib.sh
source "$repo/hack/lib.sh"

if [ "$cmd" = up ]; then
  bin_dir=$("$repo/hack/provision.sh" | tail -n 1)
  export FERROKUBE_BIN_DIR=$bin_dir
  (cd "$repo" && cargo build --release --bins --quiet)
  echo "kubectl (the same version as the apiserver): $bin_dir/kubectl"
fi
exec "$CARGO_TARGET_DIR/release/ferrokube-cluster" "$cmd" "$@"
