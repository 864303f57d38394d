#!/usr/bin/env bash
# Result tables at scale, one run: SCENES generated scenes (TILES tiles each, every table) written
# through the sink stage as the merge role writes them (Delta Lake tables), and the same scenes
# in the layout before Delta (one file per scene and table), on a local folder and on a moto S3
# server on 127.0.0.1. Reported side by side: commit throughput, files per table after
# compaction, and the latency and peak memory of
#   (a) one scene's rows by id, (b) a day's aggregate by class
# for `strata query` over Delta (after compaction), the same query over the old layout, and
# DuckDB over the same Delta tables (through the `deltalake` reader's Arrow dataset), and polars'
# scan_delta.
#
#   bash benches/tables/compare.sh [SCENES] [TILES] [STORES]   (default 100000 20 "local s3")
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SCENES=${1:-100000}
TILES=${2:-20}
STORES=${3:-local s3}
CACHE=${STRATA_CACHE:-$HOME/.cache/strata}
OUT=${STRATA_BENCH_DIR:-$CACHE/bench}/tables
bash "$ROOT/scripts/setup.sh" --tests
mkdir -p "$OUT"
cd "$ROOT"
cargo build -q --profile bench --locked -p operators --bench tables
BENCH=$(ls -t "${CARGO_TARGET_DIR:-$ROOT/target}"/release/deps/tables-* | grep -v '\.d$' | head -1)
PY=$ROOT/.venv/bin/python

# The queries: a scene in the middle of the feed, and one day.
MID=$(( SCENES / 2 ))
DAY=$(( MID % 30 + 1 ))
REQUEST=$(printf 'feed-2026-03-%02d' "$DAY")
SCENE=$(printf 'S2-%06d' "$MID")
QA="SELECT * FROM captions WHERE request_id = '$REQUEST' AND scene_id = '$SCENE'"
QB="SELECT label, count(*) AS n FROM classifications WHERE date = '2026-03-05' GROUP BY label ORDER BY label"

MOTO_PID=
cleanup() { [ -n "$MOTO_PID" ] && kill "$MOTO_PID" 2>/dev/null || true; }
trap cleanup EXIT

for store in $STORES; do
  if [ "$store" = s3 ]; then
    port=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$ROOT/.venv/bin/moto_server" -H 127.0.0.1 -p "$port" > "$OUT-moto.log" 2>&1 &
    MOTO_PID=$!
    for _ in $(seq 60); do curl -fsS "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.5; done
    curl -fsS -X PUT "http://127.0.0.1:$port/bench" >/dev/null
    export AWS_ENDPOINT="http://127.0.0.1:$port" AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1
    delta=s3://bench/delta; old=s3://bench/old
  else
    rm -rf "$OUT/local"; mkdir -p "$OUT/local"
    delta=$OUT/local/delta; old=$OUT/local/old
  fi
  echo "== $store: $SCENES scenes x $TILES tiles"
  echo "write delta: $("$BENCH" write delta "$delta" "$SCENES" "$TILES" 64)"
  echo "write old:   $("$BENCH" write old "$old" "$SCENES" "$TILES")"
  echo "compact:     $("$BENCH" compact "$delta" 128)"
  for q in a b; do
    sql=$([ $q = a ] && echo "$QA" || echo "$QB")
    table=$([ $q = a ] && echo captions || echo classifications)
    echo "($q) strata delta: $("$BENCH" query delta "$delta" "$sql")"
    echo "($q) strata old:   $("$BENCH" query old "$old" "$sql")"
    echo "($q) duckdb delta: $($PY benches/tables/duckdb_peer.py "$delta" "$table" "${sql//FROM $table/FROM t}" duckdb)"
    echo "($q) polars delta: $($PY benches/tables/duckdb_peer.py "$delta" "$table" "${sql//FROM $table/FROM t}" polars)"
  done
  cleanup; MOTO_PID=
done
