"""The peer tiler for benches/tiling/compare.sh: rasterio windowed reads doing the same work
as `strata`'s tiling stage — one 2-98 % stretch per scene measured on a decimated read,
512 px windows with 64 px overlap pulled back at the edges, average resampling to 384 px,
PNG encoding, lon/lat footprints — in the way rasterio users write it (one process).

Usage: python rasterio_tiler.py SCENE OUT_DIR  → one JSON line like the strata bench.
"""
import io
import json
import os
import resource
import sys
import time

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

TILE, OVERLAP, OUT = 512, 64, 384


def starts(extent):
    if extent <= TILE:
        return [0]
    last, stride = extent - TILE, TILE - OVERLAP
    s = list(range(0, last, stride))
    return s + [last]


def main(scene, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    started = time.perf_counter()
    tiles = 0
    with rasterio.open(scene) as src:
        bands = [1, 2, 3]
        scale = min(1.0, 1024 / max(src.width, src.height))
        sample = src.read(bands, out_shape=(3, max(1, round(src.height * scale)), max(1, round(src.width * scale))),
                          resampling=Resampling.nearest).astype(np.float32)
        lo = np.percentile(sample, 2, axis=(1, 2)).reshape(3, 1, 1)
        hi = np.percentile(sample, 98, axis=(1, 2)).reshape(3, 1, 1)
        hi = np.where(hi > lo, hi, lo + 1)
        for row in starts(src.height):
            for col in starts(src.width):
                window = Window(col, row, min(TILE, src.width), min(TILE, src.height))
                data = src.read(bands, window=window, out_shape=(3, OUT, OUT), resampling=Resampling.average).astype(np.float32)
                rgb = np.clip(np.rint((data - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(np.transpose(rgb, (1, 2, 0))).save(buffer, format="PNG", compress_level=1)
                with open(os.path.join(out_dir, f"r{row}_c{col}.png"), "wb") as f:
                    f.write(buffer.getvalue())
                t = src.window_transform(window)
                xs, ys = zip(*[t * (c, r) for c, r in [(0, 0), (0, window.height), (window.width, window.height), (window.width, 0)]])
                warp_transform(src.crs, "EPSG:4326", xs, ys)
                tiles += 1
        megapixels = src.width * src.height / 1e6
    seconds = time.perf_counter() - started
    print(json.dumps({
        "tiler": "rasterio " + rasterio.__version__,
        "threads": 1,
        "source_megapixels": megapixels,
        "tiles": tiles,
        "seconds": seconds,
        "megapixels_per_second": megapixels / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
