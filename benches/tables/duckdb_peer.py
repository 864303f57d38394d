"""DuckDB on the same Delta tables, for benches/tables/compare.sh: DuckDB's own delta extension
downloads from a host this machine cannot reach, so DuckDB queries the Arrow dataset of the
Delta reader (PyPI `deltalake`), the way the README shows analysts. Prints one JSON line.

    python duckdb_peer.py ROOT TABLE SQL     (SQL names the table as `t`)
"""
import json
import resource
import sys
import time

import deltalake
import duckdb

root, table, sql = sys.argv[1], sys.argv[2], sys.argv[3]
options = {}
if root.startswith("s3://"):
    import os

    options = {
        "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT"],
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        "AWS_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        "AWS_S3_ALLOW_UNSAFE_RENAME": "true",
    }
started = time.perf_counter()
t = deltalake.DeltaTable(f"{root.rstrip('/')}/{table}", storage_options=options).to_pyarrow_dataset()
rows = len(duckdb.sql(sql).fetchall())
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"engine": "duckdb", "rows": rows, "wall_seconds": seconds, "peak_rss_mib": peak}))
