#!/usr/bin/env bash
# Streaming benchmark, one run, same artifact, same scenes, same tasks, same threads: tiles per
# second end to end through the broker — `strata submit` onto a nisshi broker on 127.0.0.1, one
# `strata serve --role all` process (tile -> infer -> merge -> tables) — vs the embedded runtime
# (`strata batch`), reported as a ratio (target >= 0.9: pipeline overhead <= 10 %), with the
# latency from submitting a scene to its rows being in the tables (median and p95 over the
# scenes; all scenes are submitted at once, so queueing is part of it, on both sides).
#
#   bash benches/streaming/compare.sh [THREADS] [SCENES] [NEW_TOKENS]   (default 2 6 16)
#
# The model is the inference benchmark's (benches/inference/artifact.sh: a random
# Qwen2.5-0.5B-shaped LLM with LAYERS layers, default 8, and a 4-layer SigLIP); the scenes are
# the bundled GeoTIFFs, copied under new names until there are SCENES; the tasks are caption
# and classify.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
THREADS=${1:-2}
SCENES=${2:-6}
NEW=${3:-16}
LAYERS=${LAYERS:-8}
CACHE=${STRATA_CACHE:-$HOME/.cache/strata}
WORK=${STRATA_BENCH_DIR:-$CACHE/bench}/inference
OUT=${STRATA_BENCH_DIR:-$CACHE/bench}/streaming
mkdir -p "$WORK" "$OUT"
bash "$ROOT/scripts/setup.sh" --tests

cd "$ROOT"
cargo build -q --profile bench --locked -p pipeline --bin strata
STRATA=${CARGO_TARGET_DIR:-$ROOT/target}/release/strata
source "$ROOT/benches/inference/artifact.sh"
NISSHI=${STRATA_NISSHI_BIN:-$CACHE/tools/nisshi-0.8.1/bin/nisshi}

export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
python3 benches/streaming/compare.py "$STRATA" "$NISSHI" "$ART" "$OUT" "$THREADS" "$SCENES" "$NEW" data/scenes/*.tif
