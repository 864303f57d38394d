#!/usr/bin/env bash
# Gathers a runnable Strata into one folder, for container images and for copying to another
# machine: the `strata` binary, the native libraries it loads from the project venv (libtorch,
# ONNX Runtime, and for CUDA every library of the CUDA builds), and the setup assets (the
# default text encoder, WordNet, the starter description database).
#
#   bash deploy/docker/bundle.sh BINARY OUT [cpu|cuda]
#
# OUT gets bin/strata, lib/ and assets/. Run it with
#   LD_LIBRARY_PATH=OUT/lib ORT_DYLIB_PATH=OUT/lib/libonnxruntime.so.1.31.1 STRATA_ASSETS=OUT/assets
# System libraries (GDAL and its dependencies, glibc) are not bundled: install Debian's
# libgdal32 where it runs.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BINARY=${1:?usage: bundle.sh BINARY OUT [cpu|cuda]}
OUT=${2:?usage: bundle.sh BINARY OUT [cpu|cuda]}
ACCELERATOR=${3:-cpu}
SITE=$ROOT/.venv/lib/python3.11/site-packages
ASSETS=${STRATA_ASSETS:-${STRATA_CACHE:-$HOME/.cache/strata}/assets}

mkdir -p "$OUT/bin" "$OUT/lib" "$OUT/assets"
install -m 0755 "$BINARY" "$OUT/bin/strata"
strip "$OUT/bin/strata" 2>/dev/null || true
# The libraries the binary links, as the loader resolves them now: only those from the venv.
ldd "$BINARY" | awk '$3 ~ /\.venv\// { print $3 }' | while read -r lib; do
  cp -L "$lib" "$OUT/lib/"
done
cp -L "$SITE"/onnxruntime/capi/libonnxruntime.so.* "$OUT/lib/"
if [ "$ACCELERATOR" = cuda ]; then
  # Loaded at start-up with dlopen, so ldd does not see them: libtorch_cuda.so and the CUDA
  # libraries it needs (cuBLAS, cuDNN, NCCL...), and ONNX Runtime's CUDA provider.
  cp -L "$SITE"/torch/lib/*.so* "$OUT/lib/"
  for dir in "$SITE"/nvidia/*/lib "$SITE"/nvidia/*/*/lib; do
    [ -d "$dir" ] && cp -L "$dir"/*.so* "$OUT/lib/" 2>/dev/null || true
  done
  cp -L "$SITE"/onnxruntime/capi/libonnxruntime_providers_*.so "$OUT/lib/"
fi
for asset in all-minilm-l6-v2 wordnet-3.0 osm-presets; do
  [ -d "$ASSETS/$asset" ] || { echo "error: $ASSETS/$asset is missing" >&2; echo "hint: run bash scripts/setup.sh" >&2; exit 2; }
  rm -rf "${OUT:?}/assets/$asset" && cp -r "$ASSETS/$asset" "$OUT/assets/"
done
du -sh "$OUT" >&2
