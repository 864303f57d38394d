"""The peer of retrieval/benches/index.rs: faiss-cpu IndexFlatIP and IndexHNSWFlat (M=32,
efConstruction=200, inner product) on the same vectors, same threads. Build time, queries/s
one at a time and in batches of 64, recall@k against exact search for a sweep of efSearch.
Prints one JSON line.

    python benches/index/faiss_bench.py DIR D K THREADS
"""
import json
import sys
import time

import faiss
import numpy as np

directory, d, k, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
faiss.omp_set_num_threads(threads)
base = np.fromfile(f"{directory}/base.f32", dtype="<f4").reshape(-1, d)
queries = np.fromfile(f"{directory}/queries.f32", dtype="<f4").reshape(-1, d)
result = {"impl": f"faiss-cpu {faiss.__version__}", "count": len(base), "queries": len(queries), "threads": threads}


def qps(index, single_n):
    start = time.perf_counter()
    for i in range(single_n):
        index.search(queries[i:i + 1], k)
    single = single_n / (time.perf_counter() - start)
    start = time.perf_counter()
    found = []
    for i in range(0, len(queries), 64):
        found.append(index.search(queries[i:i + 64], k)[1])
    batch = len(queries) / (time.perf_counter() - start)
    return single, batch, np.concatenate(found)


start = time.perf_counter()
flat = faiss.IndexFlatIP(d)
flat.add(base)
result["flat_build_s"] = time.perf_counter() - start
single, batch, truth = qps(flat, 100)
result["flat_qps_single"], result["flat_qps_batch64"] = single, batch

start = time.perf_counter()
hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
hnsw.hnsw.efConstruction = 200
hnsw.add(base)
result["hnsw_build_s"] = time.perf_counter() - start
sweep = []
for ef in (8, 10, 12, 16, 24, 32, 48, 64, 96, 128, 160, 256):
    hnsw.hnsw.efSearch = ef
    single, batch, found = qps(hnsw, len(queries))
    recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)])
    sweep.append({"ef": ef, "recall": float(recall), "qps_single": single, "qps_batch64": batch})
result["hnsw_sweep"] = sweep
print(json.dumps(result))
