#!/usr/bin/env bash
# Generation benchmark: strata's Qwen2 decoder vs transformers' generate, on CPU, same random
# checkpoint (Qwen2.5-0.5B-shaped, 12 layers, 32k vocabulary), same prompt length, same new
# tokens, same thread count. Prints both JSON lines and the ratios.
#
#   bash benches/generation/compare.sh [THREADS] [PROMPT] [NEW] [RUNS]   (default 2 128 64 3)
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
STRATA_JSON=$("$BENCH" "$CKPT" "$THREADS" "$PROMPT" "$NEW" "$RUNS")
echo "$STRATA_JSON"
PEER_JSON=$(OMP_NUM_THREADS=$THREADS "$PEER/bin/python" "$ROOT/benches/generation/transformers_generate.py" "$CKPT" "$THREADS" "$PROMPT" "$NEW" "$RUNS")
echo "$PEER_JSON"
python3 - "$STRATA_JSON" "$PEER_JSON" <<'PY'
import json, sys
s, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
    print(f"{key}: strata {s[key]:.1f} vs peer {p[key]:.1f} -> {s[key] / p[key]:.2f}x")
print(f"peak RSS: strata {s['peak_rss_mib']:.0f} MiB vs peer {p['peak_rss_mib']:.0f} MiB")
PY
