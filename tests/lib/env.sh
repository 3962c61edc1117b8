# shellcheck shell=bash
# Sourced by every script: one place for the cache locations shared by builds, the cluster and CI.
# Expensive things (cargo target, Go caches, Kubernetes binaries, images) live outside the repo so
# clean clones reuse them; nothing depends on them being present.
export PODSFTP_CACHE="${PODSFTP_CACHE:-$HOME/.cache/podsftp}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PODSFTP_CACHE/cargo-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
mkdir -p "$PODSFTP_CACHE"
