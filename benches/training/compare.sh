#!/usr/bin/env bash
# Training benchmark: LoRA training samples/s of the language model, strata (tch) vs
# transformers + peft, on CPU, same checkpoint (the real SmolLM2-135M-Instruct that
# `scripts/setup.sh --tests` converts), same batch, sequence length, rank, steps and threads.
# Prints both JSON lines, the ratio and peak memory.
#
#   bash benches/training/compare.sh [THREADS] [BATCH] [SEQ] [STEPS] [RANK]   (default 2 4 128 8 16)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
THREADS=${1:-2}
BATCH=${2:-4}
SEQ=${3:-128}
STEPS=${4:-8}
RANK=${5:-16}
bash "$ROOT/scripts/setup.sh" --tests
CKPT=${STRATA_ASSETS:-${STRATA_CACHE:-$HOME/.cache/strata}/assets}/smollm2-135m-instruct

# The peer's own venv (full torch + transformers + peft), shared with the other benchmarks.
PEER="$ROOT/.venv-bench-llm"
if [ ! -x "$PEER/bin/python" ] || ! "$PEER/bin/python" -c 'import torch, transformers, peft' 2>/dev/null; then
  python3 -m venv "$PEER"
  "$PEER/bin/pip" install -q --disable-pip-version-check torch==2.11.0 transformers==4.57.1 peft==0.21.2 safetensors numpy
fi

cd "$ROOT"
cargo build -q --profile bench --locked -p model --bench training
BENCH=$(ls -t "${CARGO_TARGET_DIR:-$ROOT/target}"/release/deps/training-* | grep -v '\.d$' | head -n 1)
cat "$CKPT/model.safetensors" > /dev/null
STRATA_JSON=$("$BENCH" "$CKPT" "$THREADS" "$BATCH" "$SEQ" "$STEPS" "$RANK")
echo "$STRATA_JSON"
PEER_JSON=$(OMP_NUM_THREADS=$THREADS "$PEER/bin/python" "$ROOT/benches/training/peft_train.py" "$CKPT" "$THREADS" "$BATCH" "$SEQ" "$STEPS" "$RANK" 2>/dev/null)
echo "$PEER_JSON"
python3 - "$STRATA_JSON" "$PEER_JSON" <<'PY'
import json, sys
s, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert s["trainable_parameters"] == p["trainable_parameters"], (s["trainable_parameters"], p["trainable_parameters"])
print(f"samples/s: strata {s['samples_per_s']:.3f} vs transformers+peft {p['samples_per_s']:.3f} -> {s['samples_per_s'] / p['samples_per_s']:.2f}x")
print(f"loss after {s['steps'] + 2} steps: strata {s['first_loss']:.3f} -> {s['last_loss']:.3f}, peer {p['first_loss']:.3f} -> {p['last_loss']:.3f}")
print(f"peak RSS: strata {s['peak_rss_mib']:.0f} MiB vs peer {p['peak_rss_mib']:.0f} MiB")
PY
