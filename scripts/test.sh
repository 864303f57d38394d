#!/usr/bin/env bash
# The full test suite: brings the machine to a working state (scripts/setup.sh --tests), checks
# formatting (rustfmt.toml) and lints (clippy), then runs every test of every crate, end-to-end tests included,
# against real services that the tests start on 127.0.0.1 and stop afterwards. Extra arguments go to `cargo test`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh" --tests
cd "$ROOT"
start=$(date +%s)
# Formatting first (rustfmt.toml): it takes a second and needs no build. Then clippy over
# every target, warnings as errors (clippy.toml: tests may unwrap).
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast "$@"
echo "tests finished in $(( $(date +%s) - start ))s" >&2
