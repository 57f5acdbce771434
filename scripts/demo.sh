#!/usr/bin/env bash
# Fresh-machine demo: on Debian as root, install what `halyard up` and the
# README's commands use when missing, build the release binary and start
# bookinfo (extra args go to `halyard up`). `--dry-run` prints the plan only.
set -euo pipefail
cd "$(dirname "$0")/.."
dry=0
args=()
for a in "$@"; do
  if [ "$a" = "--dry-run" ]; then dry=1; else args+=("$a"); fi
done
run() { if [ "$dry" = 1 ]; then echo "would run: $*"; else "$@"; fi; }

# program:Debian package, for the runtime (ip, iptables*, setpriv) and the README (curl, jq, python3).
need="ip:iproute2 iptables:iptables iptables-restore:iptables iptables-save:iptables setpriv:util-linux curl:curl jq:jq python3:python3"
pkgs=""
for pair in $need; do
  prog=${pair%%:*}; pkg=${pair#*:}
  if ! command -v "$prog" >/dev/null 2>&1 && [[ " $pkgs " != *" $pkg "* ]]; then pkgs="$pkgs $pkg"; fi
done
if [ -n "$pkgs" ]; then
  echo "missing packages:$pkgs"
  if [ "$dry" = 0 ] && [ "$(id -u)" != 0 ]; then echo "demo.sh: run it as root (sudo bash scripts/demo.sh) to install:$pkgs" >&2; exit 1; fi
  run apt-get update -qq
  # shellcheck disable=SC2086
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs
else
  echo "all prerequisites present"
fi
# shellcheck source=scripts/rust.sh
. scripts/rust.sh
ensure_rust "$dry"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
run cargo build --release -p halyard
# The sidecar runs as uid 1337 and must reach the binary.
run chmod o+rx "$CARGO_TARGET_DIR" "$CARGO_TARGET_DIR/release"
run "$CARGO_TARGET_DIR/release/halyard" up examples/bookinfo "${args[@]}"
