"""The pipeline side of `benches/inference/compare.sh`: `strata batch` on the scenes, once
without a model (tiles only) and once with `--model` and the four tasks, each into fresh
table and tile folders. Standard library only.

What is timed: the wall clock of each command, split by the time stderr shows
`strata batch: N scene(s)`, which strata prints once the model is loaded (its files hashed, its
weights read) and the scenes are listed. `seconds` is from that line to the process's exit:
tiling (overlapped with inference, as in production), PNG reads, preprocessing, generation,
parsing, merging, the table sink and process exit, i.e. everything the direct loop does not do
but the load. `seconds_minus_tiles_only` also subtracts the same span of the tiles-only run
(tiling and sink alone, not overlapped), for reference.

Also written: TILE_LIST, the tiles-only run's PNGs (`scene_id<TAB>path`, a scene's tiles
together, in the order the scenes were given) for the direct bench; the PNGs the model run
wrote are checked to be byte for byte the same. The micro-batches strata ran are read back
from the result rows: every tile of one batch gets its row time stamp in the same instant.

    python3 benches/inference/run_batch.py STRATA WORK TILE_LIST THREADS BATCH NEW DEVICE MODEL -- TASK_FLAGS... -- SCENE...

Environment: PRECISION (`--precision` of strata batch, default auto), SLOTS (`--decode-slots`,
default all: every row of a micro-batch at once).
"""
import csv
import hashlib
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime

strata, work, tile_list = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
threads, batch, new_tokens = map(int, sys.argv[4:7])
device, model = sys.argv[7], sys.argv[8]
# The weights' type (`strata batch --precision`), from compare.sh's PRECISION.
precision = os.environ.get("PRECISION", "auto")
rest = sys.argv[9:]
assert rest[0] == "--" and rest.count("--") == 2, "usage: ... MODEL -- TASK_FLAGS... -- SCENE..."
split = rest.index("--", 1)
task_flags, scenes = rest[1:split], rest[split + 1:]
TILING = ["--tile-size", "192", "--overlap", "32"]


def run(name, extra):
    """Runs `strata batch` into fresh folders under WORK/name; returns timings and output."""
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [strata, "batch", *TILING, "--tables", str(out / "tables"), "--tiles", str(out / "tiles"), "--no-progress",
               "--threads", str(threads), *extra, *scenes]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    stamps = []
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def read_stderr():
        for line in process.stderr:
            stamps.append((time.perf_counter() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read_stderr)
    reader.start()
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    reader.join()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({process.returncode}):\n{stdout}\n" + "\n".join(l for _, l in stamps))
    ready = next((t for t, line in stamps if re.match(r"strata batch: \d+ scene\(s\)", line)), None)
    if ready is None:
        sys.exit("strata batch never printed `strata batch: N scene(s)`; its stderr:\n" + "\n".join(l for _, l in stamps))
    return {"out": out, "wall": wall, "ready": ready, "stdout": stdout, "peak_rss_mib": usage.ru_maxrss / 1024}


def query(tables, sql):
    text = subprocess.run([strata, "query", "--tables", str(tables), "--format", "csv", sql],
                          check=True, capture_output=True, text=True).stdout
    return list(csv.DictReader(io.StringIO(text)))


def local(uri):
    return pathlib.Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def tiles_of(result):
    """(scene_id, tile_id) -> PNG path, scenes in the order given, tiles in id order."""
    rows = query(result["out"] / "tables", "SELECT scene_id, tile_id, tile_uri FROM tiles")
    order = {pathlib.Path(s).name.split(".")[0]: i for i, s in enumerate(scenes)}
    rows.sort(key=lambda r: (order.get(r["scene_id"], len(order)), r["scene_id"], r["tile_id"]))
    return {(r["scene_id"], r["tile_id"]): local(r["tile_uri"]) for r in rows}


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def timestamp(text):
    text = text.strip().replace("T", " ").rstrip("Z")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)  # Python takes microseconds at most
    return datetime.fromisoformat(text.split("+")[0].strip()).timestamp()


tiles_only = run("tiles-only", [])
slots = os.environ.get("SLOTS", "all")
with_model = run("model", ["--model", model, *task_flags, "--max-new-tokens", str(new_tokens), "--batch-size", str(batch),
                           "--device", device, "--precision", precision,
                           *([] if slots in ("", "all") else ["--decode-slots", slots])])

reference = tiles_of(tiles_only)
tile_list.write_text("".join(f"{scene}\t{path}\n" for (scene, _), path in reference.items()))
written = tiles_of(with_model)
same_pngs = written.keys() == reference.keys() and all(sha(written[k]) == sha(reference[k]) for k in reference)

# Micro-batches: rows of one batch are stamped together (microseconds apart), batches seconds
# apart. One task's table is enough: every tile has one caption.
stamps = sorted((timestamp(r["produced_at"]), r["scene_id"]) for r in query(with_model["out"] / "tables",
                                                                          "SELECT scene_id, produced_at FROM captions"))
batches = []
for i, (t, _) in enumerate(stamps):
    if i > 0 and t - stamps[i - 1][0] < 0.05:
        batches[-1] += 1
    else:
        batches.append(1)
scene_rows = query(with_model["out"] / "tables", "SELECT sum(infer_ms) AS infer_ms, sum(tiles_written) AS tiles FROM scenes")
tiles = len(reference)
printed = re.search(r"\(([\d.]+) tiles/s\)", with_model["stdout"])
seconds = with_model["wall"] - with_model["ready"]
tiles_only_span = tiles_only["wall"] - tiles_only["ready"]
print(json.dumps({
    "impl": "strata batch --model (embedded runtime: tile -> infer -> merge -> sink)",
    "device": device,
    "precision": precision,
    "threads": threads,
    "scenes": len(scenes),
    "tiles": tiles,
    "tasks_per_tile": sum(1 for f in task_flags if f.startswith("--")),
    "batch_size": batch,
    "decode_slots": slots,
    "batches": batches,
    "max_new_tokens": new_tokens,
    "same_pngs_as_tiles_only_run": same_pngs,
    "wall_s": with_model["wall"],
    "model_load_s": with_model["ready"],
    "seconds": seconds,
    "tiles_per_s": tiles / seconds,
    "tiles_only_seconds": tiles_only_span,
    "seconds_minus_tiles_only": seconds - tiles_only_span,
    "tiles_per_s_minus_tiles_only": tiles / (seconds - tiles_only_span),
    "tiles_per_s_printed_by_strata": float(printed.group(1)) if printed else None,
    "generate_s_in_pipeline": float(scene_rows[0]["infer_ms"]) / 1e3 if scene_rows else None,
    "peak_rss_mib": with_model["peak_rss_mib"],
    "tiles_only_peak_rss_mib": tiles_only["peak_rss_mib"],
}))
