# Sourced by demo.sh and test.sh: make sure a Rust toolchain (cargo, Rust >=
# 1.95; Debian's own is too old for edition 2024) is on PATH, installing it
# with rustup into ~/.cargo when it is missing. `ensure_rust 1` only says what
# it would do.
ensure_rust() {
  local dry="${1:-0}"
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if command -v cargo >/dev/null 2>&1; then
    return 0
  fi
  if [ "$dry" = 1 ]; then
    echo "would run: rustup (https://sh.rustup.rs) to install cargo"
    return 0
  fi
  echo "cargo is missing: installing Rust with rustup into $HOME/.cargo"
  if ! command -v curl >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl ca-certificates >/dev/null
  fi
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
  export PATH="$HOME/.cargo/bin:$PATH"
}
