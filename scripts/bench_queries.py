"""Times the market-helper queries on DuckDB over the same Parquet files (part of scripts/bench.sh --query).

usage: bench_queries.py GLOB RUNS < queries.json   (a JSON list of DuckDB SQL texts over the view `t`)
prints one line per query: the median of RUNS runs in milliseconds.
"""
import json
import statistics
import sys
import time

import duckdb

glob, runs = sys.argv[1], int(sys.argv[2])
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute(
    f"CREATE VIEW t AS SELECT * FROM read_parquet('{glob}', hive_partitioning = true, "
    "hive_types = {'date': VARCHAR, 'symbol': VARCHAR})"
)
for sql in json.load(sys.stdin):
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        con.execute(sql).fetchall()
        times.append((time.perf_counter() - start) * 1000)
    print(f"{statistics.median(times):.1f}")
