# Shared by the hack/ scripts (sourced, not run).
# shellcheck shell=bash

# The cache for everything expensive: upstream binaries, Go build cache, cargo's target dir.
# Outside the repo, so a fresh clone (CI) reuses it.
FERROKUBE_CACHE=${FERROKUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferrokube}
export FERROKUBE_CACHE
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FERROKUBE_CACHE/target}
# One-shot builds (CI, the local cluster) gain nothing from incremental artifacts, which
# cost gigabytes of disk.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
