#!/usr/bin/env bash
# Vector-search benchmark: strata's retriever index vs faiss-cpu (IndexFlatIP, IndexHNSWFlat
# M=32 efConstruction=200) on the same N × D clustered unit vectors (default 1,000,000 × 512)
# and 1,000 queries, k = 5, same thread count. Prints both JSON lines and a summary: build
# times, exact queries/s (single, batch of 64), and HNSW queries/s at the smallest ef that
# reaches recall@5 ≥ 0.95 on each side.
#
#   bash benches/index/compare.sh [N] [D] [THREADS]     (needs ~3 × N × D × 4 bytes of disk)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
N=${1:-1000000}
D=${2:-512}
THREADS=${3:-2}
K=5
WORK=${STRATA_BENCH_DIR:-${STRATA_CACHE:-$HOME/.cache/strata}/bench}/vectors-$N-$D
bash "$ROOT/scripts/setup.sh"
PEER="$ROOT/.venv-bench-llm"
if [ ! -x "$PEER/bin/python" ] || ! "$PEER/bin/python" -c 'import faiss, numpy' 2>/dev/null; then
  [ -x "$PEER/bin/python" ] || python3 -m venv "$PEER"
  "$PEER/bin/pip" install -q --disable-pip-version-check faiss-cpu==1.15.1 numpy
fi
[ -f "$WORK/queries.f32" ] || "$PEER/bin/python" "$ROOT/benches/index/make_vectors.py" "$N" "$D" 1000 "$WORK" >&2
cd "$ROOT"
cargo build -q --profile bench --locked -p retrieval --bench index
BENCH=$(ls -t "${CARGO_TARGET_DIR:-$ROOT/target}"/release/deps/index-* | grep -v '\.d$' | head -n 1)
rm -rf "$WORK/strata-index"
STRATA_JSON=$("$BENCH" "$WORK" "$D" "$K" "$THREADS" "$WORK/strata-index")
echo "$STRATA_JSON"
PEER_JSON=$(OMP_NUM_THREADS=$THREADS "$PEER/bin/python" "$ROOT/benches/index/faiss_bench.py" "$WORK" "$D" "$K" "$THREADS")
echo "$PEER_JSON"
python3 - "$STRATA_JSON" "$PEER_JSON" <<'PY'
import json, sys
s, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"exact  qps single: strata {s['flat_qps_single']:.1f} vs faiss {p['flat_qps_single']:.1f} -> {s['flat_qps_single'] / p['flat_qps_single']:.2f}x")
print(f"exact  qps batch64: strata {s['flat_qps_batch64']:.1f} vs faiss {p['flat_qps_batch64']:.1f} -> {s['flat_qps_batch64'] / p['flat_qps_batch64']:.2f}x")
print(f"build (with HNSW): strata {s['build_with_hnsw_s']:.1f} s vs faiss HNSW {p['hnsw_build_s']:.1f} s")
def first(sweep):
    return next((r for r in sweep if r["recall"] >= 0.95), sweep[-1])
a, b = first(s["hnsw_sweep"]), first(p["hnsw_sweep"])
print(f"HNSW at recall>=0.95: strata ef={a['ef']} recall {a['recall']:.3f} {a['qps_single']:.0f} qps single, {a['qps_batch64']:.0f} batch64;"
      f" faiss ef={b['ef']} recall {b['recall']:.3f} {b['qps_single']:.0f} single, {b['qps_batch64']:.0f} batch64"
      f" -> {a['qps_single'] / b['qps_single']:.2f}x / {a['qps_batch64'] / b['qps_batch64']:.2f}x")
default = next(r for r in s["hnsw_sweep"] if r["ef"] == s["default_ef"])
print(f"strata default ef={s['default_ef']}: recall@5 {default['recall']:.3f}")
PY
