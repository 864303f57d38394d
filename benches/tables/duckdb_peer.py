"""The peers on the same Delta tables, for benches/tables/compare.sh. DuckDB: its own delta
extension downloads from a host this machine cannot reach, so DuckDB queries the Arrow dataset
of the Delta reader (PyPI `deltalake`), the way the README shows analysts. DuckDB 2.0.1 fails to
push a string equality into that dataset ("no kernel matching input types (string,
string_view)"); then the query runs again without filter pushdown and says so. polars:
`scan_delta`, which skips files by the log's statistics itself. Prints one JSON line.

    python duckdb_peer.py ROOT TABLE SQL [duckdb|polars]    (SQL names the table as `t`)
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
engine = sys.argv[4] if len(sys.argv) > 4 else "duckdb"
uri = f"{root.rstrip('/')}/{table}"
pushdown = True
started = time.perf_counter()
if engine == "polars":
    import polars

    rows = polars.SQLContext(t=polars.scan_delta(uri, storage_options=options or None)).execute(sql).collect().height
else:
    t = deltalake.DeltaTable(uri, storage_options=options).to_pyarrow_dataset()
    try:
        rows = len(duckdb.sql(sql).fetchall())
    except duckdb.InvalidInputException:
        pushdown = False
        started = time.perf_counter()
        duckdb.execute("SET disabled_optimizers = 'filter_pushdown'")
        t = deltalake.DeltaTable(uri, storage_options=options).to_pyarrow_dataset()
        rows = len(duckdb.sql(sql).fetchall())
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"engine": engine, "filter_pushdown": pushdown, "rows": rows, "wall_seconds": seconds, "peak_rss_mib": peak}))
