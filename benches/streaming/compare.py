"""The two sides of `benches/streaming/compare.sh`, standard library only.

Embedded: `strata batch` on the scenes; timed from the stderr line `strata batch: N scene(s)`
(printed once the model is loaded) to the process's exit. A scene's latency is its `scenes`
row's `produced_at` minus that moment.

Broker: a nisshi broker (memory storage) on a free loopback port and one `strata serve --role
all` on it; once serving (model loaded, every role assigned its partitions), `strata submit`
sends every scene at once. Timed from just before the submit to the last scene committed to
the tables (the serve log's `Scene committed.` lines, which cost nothing to watch). A scene's
latency is its commit time minus that start.

    python3 benches/streaming/compare.py STRATA NISSHI MODEL OUT THREADS SCENES NEW SCENE_FILE...
"""
import csv
import io
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

strata, nisshi, model, out = sys.argv[1], sys.argv[2], sys.argv[3], pathlib.Path(sys.argv[4])
threads, n_scenes, new_tokens = map(int, sys.argv[5:8])
sources = [pathlib.Path(p) for p in sys.argv[8:]]
TILING = ["--tile-size", "192", "--overlap", "32"]
TASKS = ["--caption", "--classify", "forest,water,farmland,residential,industrial,bare land"]
MODEL_FLAGS = ["--model", model, "--max-new-tokens", str(new_tokens), "--batch-size", "4", "--device", "cpu"]

scenes_dir = out / "scenes"
shutil.rmtree(scenes_dir, ignore_errors=True)
scenes_dir.mkdir(parents=True)
scenes = []
for i in range(n_scenes):
    source = sources[i % len(sources)]
    target = scenes_dir / f"{source.stem}-{i}.tif"
    shutil.copyfile(source, target)
    scenes.append(str(target))


def query(tables, sql):
    text = subprocess.run([strata, "query", "--tables", str(tables), "--format", "csv", sql],
                          check=True, capture_output=True, text=True).stdout
    return list(csv.DictReader(io.StringIO(text)))


def epoch(text):
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip().replace("Z", "+00:00"))
    return datetime.fromisoformat(text).timestamp()


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def embedded():
    base = out / "embedded"
    shutil.rmtree(base, ignore_errors=True)
    command = [strata, "batch", *TILING, "--tables", str(base / "tables"), "--tiles", str(base / "tiles"), "--no-progress",
               "--threads", str(threads), *MODEL_FLAGS, *TASKS, *scenes]
    stamps = []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def read_stderr():
        for line in process.stderr:
            stamps.append((time.time(), line.rstrip("\n")))

    reader = threading.Thread(target=read_stderr)
    reader.start()
    stdout = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    end = time.time()
    reader.join()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"strata batch failed:\n{stdout}\n" + "\n".join(l for _, l in stamps))
    ready = next(t for t, line in stamps if re.match(r"strata batch: \d+ scene\(s\)", line))
    rows = query(base / "tables", "SELECT scene_id, produced_at, tiles_written FROM scenes")
    tiles = sum(int(r["tiles_written"]) for r in rows)
    latencies = [epoch(r["produced_at"]) - ready for r in rows]
    return {"impl": "strata batch (embedded runtime)", "scenes": len(rows), "tiles": tiles, "seconds": end - ready,
            "tiles_per_s": tiles / (end - ready), "latency_p50_s": statistics.median(latencies),
            "latency_p95_s": percentile(latencies, 0.95), "peak_rss_mib": usage.ru_maxrss / 1024}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, done, timeout, processes):
    deadline = time.time() + timeout
    while not done():
        for name, p in processes:
            if p.poll() is not None:
                sys.exit(f"{name} exited ({p.returncode}) while waiting for {what}")
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.2)


def broker():
    base = out / "broker"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker_log = open(base / "nisshi.log", "w")
    broker = subprocess.Popen([nisshi, "broker", "--listener-url", url, "--advertised-listener-url", url,
                               "--storage-engine", "memory://nisshi/"], stdout=broker_log, stderr=broker_log)
    brokers = f"127.0.0.1:{port}"
    serve_log_path = base / "serve.log"
    serve_log = open(serve_log_path, "w")
    try:
        time.sleep(1)
        serve = subprocess.Popen([strata, "serve", "--role", "all", "--brokers", brokers, "--tables", str(base / "tables"),
                                  "--tiles", str(base / "tiles"), "--threads", str(threads), "--listen", "off", *MODEL_FLAGS],
                                 stdout=subprocess.DEVNULL, stderr=serve_log, env=dict(os.environ, STRATA_LOG="info"))
        log = lambda: re.sub(r"\x1b\[[0-9;]*m", "", serve_log_path.read_text())
        processes = [("nisshi", broker), ("strata serve", serve)]
        wait_for("the roles to be assigned their partitions",
                 lambda: all(f'Partition assigned. topic="{t}"' in log() for t in ("scenes", "tiles", "results")), 180, processes)
        start = time.time()
        submitted = subprocess.run([strata, "submit", "--brokers", brokers, "--request-id", "bench", *TILING, *TASKS, *scenes],
                                   capture_output=True, text=True)
        if submitted.returncode != 0:
            sys.exit(f"strata submit failed: {submitted.stdout}{submitted.stderr}")
        commits = lambda: re.findall(r"^(\S+).*Scene committed\. request_id=bench", log(), re.M)
        wait_for("every scene in the tables", lambda: len(commits()) >= len(scenes), 3600, processes)
        times = [epoch(t) for t in commits()]
        serve.send_signal(signal.SIGTERM)
        _, _, usage = os.wait4(serve.pid, 0)
    finally:
        for p in (locals().get("serve"), broker):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    rows = query(base / "tables", "SELECT scene_id, tiles_written FROM scenes")
    tiles = sum(int(r["tiles_written"]) for r in rows)
    latencies = [t - start for t in times]
    seconds = max(times) - start
    return {"impl": "strata submit -> nisshi -> strata serve --role all", "scenes": len(rows), "tiles": tiles, "seconds": seconds,
            "tiles_per_s": tiles / seconds, "latency_p50_s": statistics.median(latencies),
            "latency_p95_s": percentile(latencies, 0.95), "peak_rss_mib": usage.ru_maxrss / 1024}


e = embedded()
print(json.dumps(e))
b = broker()
print(json.dumps(b))
if b["tiles"] != e["tiles"]:
    print(f"note: the broker run tiled {b['tiles']} tiles, the embedded run {e['tiles']}")
print(f"{len(scenes)} scenes, {e['tiles']} tiles x 2 tasks, {new_tokens} new tokens, {threads} threads")
print(f"broker {b['tiles_per_s']:.3f} tiles/s vs embedded {e['tiles_per_s']:.3f} tiles/s -> {b['tiles_per_s'] / e['tiles_per_s']:.3f} "
      f"(overhead {100 * (1 - b['tiles_per_s'] / e['tiles_per_s']):.1f}%)")
print(f"submit to rows: broker median {b['latency_p50_s']:.1f} s, p95 {b['latency_p95_s']:.1f} s; "
      f"embedded median {e['latency_p50_s']:.1f} s, p95 {e['latency_p95_s']:.1f} s")
print(f"peak RSS: broker (serve) {b['peak_rss_mib']:.0f} MiB, embedded {e['peak_rss_mib']:.0f} MiB")
