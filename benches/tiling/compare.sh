#!/usr/bin/env bash
# Tiling benchmark: strata vs a rasterio windowed-read tiler on the same generated COG
# (20000 × 20000 px, 3 bands, u16, 512 px blocks, DEFLATE, overviews), same work (stretch,
# 512/64 windows, resize to 384, PNG, footprints), same GDAL block cache (256 MiB). Prints both
# JSON lines and the ratio.
#
#   bash benches/tiling/compare.sh [SIZE_PX]     (default 20000; smaller for a quick look)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SIZE=${1:-20000}
WORK=${STRATA_BENCH_DIR:-${STRATA_CACHE:-$HOME/.cache/strata}/bench}
mkdir -p "$WORK"
bash "$ROOT/scripts/setup.sh"

# The peer's own venv: rasterio wheels bundle their GDAL.
if [ ! -x "$ROOT/.venv-bench/bin/python" ] || ! "$ROOT/.venv-bench/bin/python" -c 'import rasterio, PIL' 2>/dev/null; then
  python3 -m venv "$ROOT/.venv-bench"
  "$ROOT/.venv-bench/bin/pip" install -q --disable-pip-version-check rasterio==1.4.4 pillow==12.0.0 numpy==2.4.6
fi

SCENE=$WORK/cog-${SIZE}.tif
if [ ! -f "$SCENE" ]; then
  echo "generating a ${SIZE}² 3-band u16 COG from the bundled Landsat scene (once)..." >&2
  gdal_translate -q -ot UInt16 -scale 0 255 0 10000 -b 3 -b 2 -b 1 -outsize "$SIZE" "$SIZE" -r bilinear \
    "$ROOT/data/scenes/L7_ETMs.tif" "$WORK/big-${SIZE}.tif" -co TILED=YES -co BIGTIFF=YES
  gdal_translate -q -of COG -co BLOCKSIZE=512 -co COMPRESS=DEFLATE -co BIGTIFF=YES -co NUM_THREADS=ALL_CPUS \
    "$WORK/big-${SIZE}.tif" "$SCENE"
  rm -f "$WORK/big-${SIZE}.tif"
fi
ls -la "$SCENE" >&2

cd "$ROOT"
cargo build -q --profile bench --locked -p operators --bench tiling
# The bench profile writes into release/ (Cargo names its output folder after the profile it inherits).
BENCH=$(ls -t "${CARGO_TARGET_DIR:-$ROOT/target}"/release/deps/tiling-* | grep -v '\.d$' | head -n 1)
rm -rf "$WORK/out-strata" "$WORK/out-rasterio"
# Warm the page cache for both, so neither pays the first disk read.
cat "$SCENE" > /dev/null
STRATA_JSON=$("$BENCH" "$SCENE" "$WORK/out-strata")
echo "$STRATA_JSON"
# The same GDAL block cache as strata's tiler uses (its default is 5 % of RAM).
RASTERIO_JSON=$(GDAL_CACHEMAX=256 "$ROOT/.venv-bench/bin/python" "$ROOT/benches/tiling/rasterio_tiler.py" "$SCENE" "$WORK/out-rasterio")
echo "$RASTERIO_JSON"
python3 - "$STRATA_JSON" "$RASTERIO_JSON" <<'PY'
import json, sys
s, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"strata {s['megapixels_per_second']:.1f} MP/s ({s['threads']} threads, peak RSS {s['peak_rss_mib']:.0f} MiB) vs "
      f"{r['tiler']} {r['megapixels_per_second']:.1f} MP/s (peak RSS {r['peak_rss_mib']:.0f} MiB): "
      f"{s['megapixels_per_second'] / r['megapixels_per_second']:.2f}x; tiles {s['tiles']} vs {r['tiles']}")
PY
