#!/usr/bin/env bash
# The training acceptance on CPU: a small model (random 8-layer 64-wide LLM with the test
# tokenizer, a 3-layer 64 px SigLIP, prompter, experts, LoRA) trained by `strata train align`
# then `strata train instruct` on `strata data synth` data, then measured by `strata eval` on
# the held-out split, beside the same model untrained. Prints both evaluation tables.
#
#   bash benches/training/synth_accuracy.sh [OUT]      (default $STRATA_CACHE/bench/synth-accuracy)
#
# Sizes can be shrunk for a smoke run: N=60 ALIGN_STEPS=5 INSTRUCT_STEPS=10.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${1:-${STRATA_CACHE:-$HOME/.cache/strata}/bench/synth-accuracy}
N=${N:-600}
ALIGN_STEPS=${ALIGN_STEPS:-150}
INSTRUCT_STEPS=${INSTRUCT_STEPS:-1500}
bash "$ROOT/scripts/setup.sh"
(cd "$ROOT" && cargo build --locked -q -p pipeline --bin strata)
STRATA=${CARGO_TARGET_DIR:-$ROOT/target}/debug/strata
rm -rf "$OUT" && mkdir -p "$OUT" && cd "$OUT"

"$STRATA" data synth --out data --n "$N" --seed 1 --size 64
python3 - "$ROOT/model/tests/fixtures/tiny-model/config.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["vision"] = {"hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 3, "num_attention_heads": 4, "image_size": 64, "patch_size": 8}
json.dump(config, open("config.json", "w"), indent=1)
PY
"$STRATA" model init --config config.json --tokenizer "$ROOT/model/tests/fixtures/tokenizer/tokenizer.json" --random \
  --model-version synth-base --device cpu --out base
cat > align.toml <<TOML
model = "base"
data = "data/train/align.jsonl"
held_out = "data/test/align.jsonl"
out = "runs/align"
steps = $ALIGN_STEPS
batch_size = 16
learning_rate = 2e-3
checkpoint_every = 50
eval_every = 50
eval_samples = 32
model_version = "synth-align"
TOML
cat > instruct.toml <<TOML
model = "runs/align/model"
data = "data/train/instruct.jsonl"
held_out = "data/test/instruct.jsonl"
out = "runs/instruct"
steps = $INSTRUCT_STEPS
batch_size = 16
learning_rate = 2e-3
# The tower starts random here, so it learns at a rate close to the new modules'.
vision_learning_rate = 5e-4
checkpoint_every = 250
eval_every = 250
eval_samples = 64
model_version = "synth-instruct"
TOML
start=$(date +%s)
"$STRATA" train align --config align.toml --device cpu
"$STRATA" train instruct --config instruct.toml --device cpu
echo "training took $(( $(date +%s) - start )) s" >&2

for model in base runs/instruct/model; do
  for benchmark in aid:aid dior-rsvg:dior-rsvg ucm-captions:ucm-captions rsvqa-lr:rsvqa; do
    "$STRATA" eval --benchmark "${benchmark%%:*}" --data "data/eval/${benchmark#*:}" --model "$model" --device cpu \
      --no-bertscore --out "eval/$(basename "$model")-${benchmark%%:*}" | grep -v '^wrote'
  done
done
