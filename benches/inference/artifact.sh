# Sourced by the inference and streaming benchmarks, from the repository root, after STRATA
# (the strata binary), WORK (the inference bench folder) and LAYERS are set: makes (once) the
# benchmark model and the transformers peer's venv. Sets PEER, TOKENIZER, STOP, QWEN and ART.
#
# The model: a random Qwen2.5-0.5B-shaped checkpoint with LAYERS layers whose stop tokens greedy
# decoding never picks (so every answer is exactly max_new_tokens long), a 4-layer 224 px SigLIP,
# and the strata artifact `strata model init` makes of both.

# The peer's venv, shared with the generation benchmark.
PEER="$ROOT/.venv-bench-llm"
if [ ! -x "$PEER/bin/python" ] || ! "$PEER/bin/python" -c 'import torch, transformers' 2>/dev/null; then
  python3 -m venv "$PEER"
  "$PEER/bin/pip" install -q --disable-pip-version-check torch==2.11.0 transformers==4.57.1 safetensors numpy
fi

TOKENIZER=$ROOT/model/tests/fixtures/tokenizer/tokenizer.json
STOP=$(python3 -c 'import json, sys
ids = {t["content"]: t["id"] for t in json.load(open(sys.argv[1]))["added_tokens"]}
print(",".join(str(ids[t]) for t in ("<|im_end|>", "<|endoftext|>") if t in ids))' "$TOKENIZER")
QWEN=$WORK/qwen2-${LAYERS}l
ART=$WORK/artifact-${LAYERS}l
if [ ! -f "$ART/manifest.json" ]; then
  rm -rf "$QWEN" "$ART" "$WORK/artifact-src"
  "$PEER/bin/python" benches/generation/make_bench_model.py "$QWEN" --layers "$LAYERS" --never-emit "$STOP" >&2
  "$PEER/bin/python" benches/inference/make_bench_artifact.py "$QWEN" "$WORK/artifact-src" >&2
  "$STRATA" model init --config "$WORK/artifact-src/config.json" --tokenizer "$TOKENIZER" \
    --checkpoint "$WORK/artifact-src/siglip/model.safetensors" --checkpoint "$QWEN/model.safetensors" \
    --model-version bench --out "$ART" --device cpu >&2
fi
