#!/usr/bin/env bash
# Caption-scoring benchmark: strata's metrics vs the Python reference implementations on the
# same answer files (N caption pairs with 1-5 references, default 100000), same tokens, same
# threads. BERTScore runs on the first BERT_N pairs (default 2000) on both sides. Prints both
# JSON lines and the time ratio per metric.
#
#   bash benches/scoring/compare.sh [N] [BERT_N] [THREADS]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
N=${1:-100000}
BERT_N=${2:-2000}
THREADS=${3:-2}
CACHE=${STRATA_CACHE:-$HOME/.cache/strata}
WORK=${STRATA_BENCH_DIR:-$CACHE/bench}/captions-$N
bash "$ROOT/scripts/setup.sh"

PEER="$ROOT/.venv-bench-llm"
if [ ! -x "$PEER/bin/python" ] || ! "$PEER/bin/python" -c 'import bert_score, nltk, rouge_score, pycocoevalcap' 2>/dev/null; then
  [ -x "$PEER/bin/python" ] || python3 -m venv "$PEER"
  "$PEER/bin/pip" install -q --disable-pip-version-check torch==2.11.0 transformers==4.57.1 nltk==3.9.2 \
    rouge-score==0.1.2 pycocoevalcap==1.2 bert-score==0.3.12
fi
[ -f "$WORK/references.jsonl" ] || "$PEER/bin/python" "$ROOT/benches/scoring/make_pairs.py" "$N" "$WORK" >&2

cd "$ROOT"
cargo build -q --profile bench --locked -p eval --bench scoring
BENCH=$(ls -t "${CARGO_TARGET_DIR:-$ROOT/target}"/release/deps/scoring-* | grep -v '\.d$' | head -n 1)
STRATA_JSON=$("$BENCH" "$WORK" "$THREADS" "$BERT_N")
echo "$STRATA_JSON"
PEER_JSON=$(OMP_NUM_THREADS=$THREADS "$PEER/bin/python" "$ROOT/benches/scoring/python_scoring.py" "$WORK" "$CACHE/assets" "$THREADS" "$BERT_N" 2>/dev/null)
echo "$PEER_JSON"
python3 - "$STRATA_JSON" "$PEER_JSON" <<'PY'
import json, sys
s, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for key in s["seconds"]:
    a, b = s["seconds"][key], p["seconds"].get(key)
    if b:
        print(f"{key:>24}: strata {a:8.2f} s   python {b:8.2f} s   -> {b / a:6.1f}x faster")
for key in s["scores"]:
    print(f"{key:>24}: strata {s['scores'][key]:.6f}   python {p['scores'][key]:.6f}")
PY
