"""Writes the vector-search benchmark data: N clustered, L2-normalised D-dimensional vectors
(base.f32) and Q queries drawn the same way (queries.f32), row-major little-endian float32,
deterministic. Clustered like real text embeddings: 2,000 centres, points scattered around them.

    python benches/index/make_vectors.py N D Q OUT_DIR
"""
import pathlib
import sys

import numpy as np

n, d, q, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), pathlib.Path(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(5)
centres = rng.standard_normal((2000, d), dtype=np.float32)


def draw(count, path):
    with open(path, "wb") as f:
        for start in range(0, count, 100_000):
            m = min(100_000, count - start)
            pick = rng.integers(0, len(centres), m)
            x = centres[pick] + 0.6 * rng.standard_normal((m, d), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            f.write(x.astype("<f4").tobytes())


draw(n, out / "base.f32")
draw(q, out / "queries.f32")
print(f"wrote {n} x {d} base and {q} queries to {out}")
