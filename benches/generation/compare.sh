#!/usr/bin/env bash
# Generation benchmark: strata's Qwen2 decoder vs transformers' generate, on CPU, same random
# checkpoint (Qwen2.5-0.5B-shaped, 12 layers, 32k vocabulary), same prompt length, same new
# tokens, same thread count, same batch, same weight precision. Prints every JSON line and the
# ratios, and strata's decode speed as a fraction of the memory-bandwidth bound (a STREAM-style
# copy measured in the same run: at batch 1 each step reads every weight once).
#
#   bash benches/generation/compare.sh [THREADS] [PROMPT] [NEW] [RUNS]   (default 2 128 64 3)
#
# Environment: BATCHES (rows decoded together, default "1 16"), PRECISIONS (default "f32 bf16";
# bf16 is what `--precision auto` picks on CPUs with AVX-512 BF16).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
THREADS=${1:-2}
PROMPT=${2:-128}
NEW=${3:-64}
RUNS=${4:-3}
WORK=${STRATA_BENCH_DIR:-${STRATA_CACHE:-$HOME/.cache/strata}/bench}
mkdir -p "$WORK"
bash "$ROOT/scripts/setup.sh"

# The peer's own venv (full torch + transformers; the project venv only carries libtorch).
PEER="$ROOT/.venv-bench-llm"
if [ ! -x "$PEER/bin/python" ] || ! "$PEER/bin/python" -c 'import torch, transformers' 2>/dev/null; then
  python3 -m venv "$PEER"
  "$PEER/bin/pip" install -q --disable-pip-version-check torch==2.11.0 transformers==4.57.1 safetensors numpy
fi

CKPT=$WORK/qwen2-bench
[ -f "$CKPT/model.safetensors" ] || "$PEER/bin/python" "$ROOT/benches/generation/make_bench_model.py" "$CKPT" >&2

cd "$ROOT"
cargo build -q --profile bench --locked -p model --bench generation
BENCH=$(ls -t "${CARGO_TARGET_DIR:-$ROOT/target}"/release/deps/generation-* | grep -v '\.d$' | head -n 1)
cat "$CKPT/model.safetensors" > /dev/null
BATCHES=${BATCHES:-1 16}
PRECISIONS=${PRECISIONS:-f32 bf16}
LINES=()
for precision in $PRECISIONS; do
  for batch in $BATCHES; do
    STRATA_JSON=$("$BENCH" "$CKPT" "$THREADS" "$PROMPT" "$NEW" "$RUNS" "$batch" "$precision")
    echo "$STRATA_JSON"
    PEER_JSON=$(OMP_NUM_THREADS=$THREADS "$PEER/bin/python" "$ROOT/benches/generation/transformers_generate.py" "$CKPT" "$THREADS" "$PROMPT" "$NEW" "$RUNS" "$batch" "$precision")
    echo "$PEER_JSON"
    LINES+=("$STRATA_JSON" "$PEER_JSON")
  done
done
python3 - "${LINES[@]}" <<'PY'
import json, sys
lines = [json.loads(a) for a in sys.argv[1:]]
for s, p in zip(lines[0::2], lines[1::2]):
    head = f"{s['precision']} batch {s['batch']}:"
    for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
        print(f"{head} {key}: strata {s[key]:.1f} vs transformers {p[key]:.1f} -> {s[key] / p[key]:.2f}x")
    print(f"{head} decode is {100 * s['fraction_of_bandwidth_bound']:.0f}% of the bandwidth bound "
          f"({s['bandwidth_bound_tokens_per_s']:.1f} tokens/s: {s['weight_bytes_per_step'] / 1e6:.0f} MB per step, "
          f"STREAM copy {s['stream_copy_gb_s']:.1f} GB/s)")
    print(f"{head} peak RSS: strata {s['peak_rss_mib']:.0f} MiB vs transformers {p['peak_rss_mib']:.0f} MiB")
PY
