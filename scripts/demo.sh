#!/usr/bin/env bash
# The main job end to end on the embedded default (no broker, local object store).
# Until the tiling operator lands this builds `strata` and runs its self-check.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
cargo build --locked -p pipeline --bin strata
STRATA=${CARGO_TARGET_DIR:-$ROOT/target}/debug/strata
"$STRATA" info
echo
"$STRATA" --help
