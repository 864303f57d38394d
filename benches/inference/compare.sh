#!/usr/bin/env bash
# Inference benchmark, one run, same artifact, same tiles, same threads: tiles per second through
# `strata batch --model` with four tasks (caption, classify, VQA, detect) vs
#   (a) the model's batched generation (`StrataModel::generate`) called directly in a loop over
#       the same preprocessed tiles and batches (operators/benches/inference.rs): the pipeline's
#       overhead;
#   (b) transformers' Qwen2ForCausalLM `generate` called once per tile and task with
#       `inputs_embeds` as long as strata's prompts, on the same Qwen2 weights: how
#       remote-sensing LVLM repositories run inference;
#   (c) transformers' `generate` once per micro-batch, left-padded, the same micro-batches as
#       strata ran: the peer an engineer who cares about throughput would run.
# Every side runs in the same precision: PRECISION (auto, f32 or bf16) as strata resolves it;
# auto is bf16 on CUDA, and on CPUs with AVX-512 BF16 for LLMs at least 512 wide (this one is
# 896).
# The model: a random artifact made by `strata model init` from a SigLIP (4 layers, 224 px) and
# the generation benchmark's Qwen2.5-0.5B-shaped checkpoint with fewer layers, whose stop
# tokens greedy decoding never picks, so every side generates exactly NEW tokens per answer.
# Prints the three JSON lines, the overhead and the speed-up, and peak memory.
#
#   bash benches/inference/compare.sh [THREADS] [TILES] [NEW_TOKENS]   (default 2 13 32)
#
# TILES: scenes are whole, so the bundled GeoTIFFs (data/scenes) are taken in turn, copied
# under new names when more are needed, until at least TILES tiles (192 px windows, 32 px
# overlap, 384 px PNGs); the JSON says how many. Environment: BATCH (tiles per micro-batch,
# default 4), SLOTS (rows decoded at once, continuous batching; default all: every row of a
# micro-batch at once), LAYERS (LLM layers, default 8), DEVICE (cpu, or cuda on a GPU
# machine), PRECISION (default auto).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
THREADS=${1:-2}
TILES=${2:-13}
NEW=${3:-32}
BATCH=${BATCH:-4}
LAYERS=${LAYERS:-8}
DEVICE=${DEVICE:-cpu}
export PRECISION=${PRECISION:-auto} SLOTS=${SLOTS:-all}
WORK=${STRATA_BENCH_DIR:-${STRATA_CACHE:-$HOME/.cache/strata}/bench}/inference
mkdir -p "$WORK"
bash "$ROOT/scripts/setup.sh"

cd "$ROOT"
cargo build -q --profile bench --locked -p pipeline --bin strata
cargo build -q --profile bench --locked -p operators --bench inference
# The bench profile writes into release/ (Cargo names its output folder after the profile it inherits).
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
STRATA=$TARGET/strata
BENCH=$(ls -t "$TARGET"/deps/inference-* | grep -v '\.d$' | head -n 1)

# The model (and the peer's venv): sets PEER, QWEN, ART, STOP, TOKENIZER.
source "$ROOT/benches/inference/artifact.sh"

# Scenes: the bundled GeoTIFFs in turn until at least TILES tiles.
if [ ! -f "$WORK/tiles-per-scene.txt" ]; then
  rm -rf "$WORK/count"
  "$STRATA" batch --tile-size 192 --overlap 32 --no-progress --tables "$WORK/count/tables" --tiles "$WORK/count/tiles" \
    data/scenes/*.tif >/dev/null
  "$STRATA" query --tables "$WORK/count/tables" --format csv \
    "SELECT scene_id, count(*) AS n FROM tiles GROUP BY scene_id ORDER BY scene_id" | tail -n +2 | tr ',' ' ' \
    > "$WORK/tiles-per-scene.txt"
fi
rm -rf "$WORK/scenes" && mkdir -p "$WORK/scenes"
SCENES=() total=0 round=1
while [ "$total" -lt "$TILES" ]; do
  while read -r scene n; do
    [ -n "$scene" ] || continue  # the query's CSV ends with an empty line
    [ "$total" -ge "$TILES" ] && break
    cp "data/scenes/$scene.tif" "$WORK/scenes/$scene-$round.tif"
    SCENES+=("$WORK/scenes/$scene-$round.tif")
    total=$((total + n))
  done < "$WORK/tiles-per-scene.txt"
  round=$((round + 1))
done

CLASSES="forest,water,farmland,residential,industrial,bare land"
QUESTION="Is there a river in the image?"
TARGET_CLASS=ship
TASK_FLAGS=(--caption --classify "$CLASSES" --vqa "$QUESTION" --detect "$TARGET_CLASS")
python3 -c 'import json, sys
classes = [c.strip() for c in sys.argv[1].split(",") if c.strip()]
print(json.dumps([{"task": "caption"}, {"task": "classify", "classes": classes},
                  {"task": "vqa", "question": sys.argv[2]}, {"task": "detect", "target": sys.argv[3]}]))' \
  "$CLASSES" "$QUESTION" "$TARGET_CLASS" > "$WORK/tasks.json"

cat "$ART/model.safetensors" "$QWEN/model.safetensors" > /dev/null
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
BATCH_JSON=$(python3 benches/inference/run_batch.py "$STRATA" "$WORK" "$WORK/tiles.txt" "$THREADS" "$BATCH" "$NEW" "$DEVICE" "$ART" \
  -- "${TASK_FLAGS[@]}" -- "${SCENES[@]}")
echo "$BATCH_JSON"
DIRECT_JSON=$("$BENCH" "$ART" "$WORK/tiles.txt" "$WORK/tasks.json" "$THREADS" "$BATCH" "$NEW" "$DEVICE" "$PRECISION" "$SLOTS")
echo "$DIRECT_JSON"
field() { python3 -c 'import json, sys; v = json.loads(sys.argv[1])[sys.argv[2]]; print(",".join(map(str, v)) if isinstance(v, list) else v)' "$DIRECT_JSON" "$1"; }
PROMPTS=$(field prompt_tokens_per_task)
N=$(field tiles)
BATCHES=$(field batches)
# The precision strata resolved `auto` to, for the peers.
RESOLVED=$(field precision)
PEER_JSON=$("$PEER/bin/python" benches/inference/transformers_loop.py "$QWEN" "$THREADS" "$N" "$NEW" "$PROMPTS" "$STOP" "$DEVICE" "$RESOLVED")
echo "$PEER_JSON"
BATCHED_JSON=$("$PEER/bin/python" benches/inference/transformers_batched.py "$QWEN" "$THREADS" "$BATCHES" "$NEW" "$PROMPTS" "$STOP" "$DEVICE" "$RESOLVED")
echo "$BATCHED_JSON"
python3 - "$BATCH_JSON" "$DIRECT_JSON" "$PEER_JSON" "$BATCHED_JSON" <<'PY'
import json, sys
b, d, p, q = (json.loads(a) for a in sys.argv[1:5])
rows = d["tiles"] * d["tasks_per_tile"]
print(f"tiles {d['tiles']} x {d['tasks_per_tile']} tasks, batch {d['batch_size']} tiles, prompts {d['prompt_tokens_per_task']} tokens, "
      f"{d['max_new_tokens']} new tokens, {d['threads']} threads, {d['device']}, {d['precision']}")
print(f"generated tokens: direct {d['generated_tokens']} ({d['answers_ended_by_stop_token']} answers stopped early), "
      f"peer {p['generated_tokens']}, expected {rows * d['max_new_tokens']}")
print(f"decoder slot occupancy (direct, {d['decode_slots']} slots): {100 * d['slot_occupancy']:.1f}%")
if b["batches"] != d["batches"]:
    print(f"note: strata batch ran micro-batches {b['batches']}, the direct loop {d['batches']}")
if not b["same_pngs_as_tiles_only_run"]:
    print("note: the model run wrote different PNGs from the tiles-only run")
print(f"strata batch {b['tiles_per_s']:.3f} tiles/s vs direct generate {d['tiles_per_s']:.3f} tiles/s "
      f"-> pipeline overhead {100 * (1 - b['tiles_per_s'] / d['tiles_per_s']):.1f}% "
      f"(tiling subtracted: {100 * (1 - b['tiles_per_s_minus_tiles_only'] / d['tiles_per_s']):.1f}%)")
print(f"strata batch {b['tiles_per_s']:.3f} tiles/s vs transformers generate loop {p['tiles_per_s']:.3f} tiles/s "
      f"-> {b['tiles_per_s'] / p['tiles_per_s']:.2f}x (direct generate: {d['tiles_per_s'] / p['tiles_per_s']:.2f}x)")
print(f"strata batch {b['tiles_per_s']:.3f} tiles/s vs transformers batched generate {q['tiles_per_s']:.3f} tiles/s "
      f"-> {b['tiles_per_s'] / q['tiles_per_s']:.2f}x (direct generate: {d['tiles_per_s'] / q['tiles_per_s']:.2f}x)")
print(f"peak RSS: strata batch {b['peak_rss_mib']:.0f} MiB, direct {d['peak_rss_mib']:.0f} MiB, "
      f"transformers loop {p['peak_rss_mib']:.0f} MiB, batched {q['peak_rss_mib']:.0f} MiB")
PY
