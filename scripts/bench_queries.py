"""Query benchmark: ticklake and DuckDB on the same Parquet files (part of scripts/bench.sh --query).

usage: bench_queries.py BIN LAKE_DIR RUNS [JSON_OUT]

LAKE_DIR is where `ticklake` runs (its embedded catalog and the table `stock_topic`, partitioned by date
and symbol). Both engines stay up for the whole benchmark: one `ticklake sql --timing` shell, fed one
statement at a time, and one DuckDB connection over `read_parquet(LAKE_DIR/lake/stock_topic/*/*/*.parquet)`.
Each query first runs once on each engine untimed (the warm-up, whose answers are compared), then RUNS
times on each, interleaved: ticklake then DuckDB in one round, DuckDB then ticklake in the next. A
machine that slows down or speeds up over a minute (a shared host does) then weighs on both engines
alike, not on whichever ran second. The median of each engine's RUNS times is reported. Both are
in-process times without start-up: ticklake's include planning, listing the catalog's partitions and
collecting the result; DuckDB's include materialising it as an Arrow table.

The answers are compared before any time is reported: the same number of rows and, for every numeric
column, the same sum (relative tolerance 1e-6, since the engines add floats in different orders). A
mismatch stops the benchmark.
"""
import csv
import datetime
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import duckdb

# (name, ticklake SQL over `stock_topic`, DuckDB SQL over the view `t`); {sym}, {day}, {lo}, {hi} are
# filled in from the data. The DuckDB side spells the market helpers out (`time_bucket`,
# `arg_min`/`arg_max`, `sum(p * v) / sum(v)`); the rest is the same SQL on both.
BARS = (
    "SELECT symbol, time_bucket(INTERVAL '{i}', ts) AS bar, arg_min(open, ts), max(high), min(low), "
    "arg_max(close, ts), sum(volume), sum(close * volume) / sum(volume), count(*) FROM t {where}"
    "GROUP BY 1, 2 ORDER BY 1, 2"
)
QUERIES = [
    ("count(*), all rows", "SELECT count(*) FROM {t}", None),
    (
        "per-symbol aggregates",
        "SELECT symbol, count(*), min(low), max(high), avg(close), sum(volume) FROM {t} "
        "GROUP BY symbol ORDER BY symbol",
        None,
    ),
    (
        "ohlcv 1-minute bars, one symbol",
        "SELECT * FROM ohlcv('stock_topic', '1 minute', '{sym}')",
        BARS.format(i="1 minute", where="WHERE symbol = '{sym}' "),
    ),
    ("ohlcv 1-hour bars, all symbols", "SELECT * FROM ohlcv('stock_topic', '1 hour')", BARS.format(i="1 hour", where="")),
    ("ohlcv 1-day bars, all symbols", "SELECT * FROM ohlcv('stock_topic', '1 day')", BARS.format(i="1 day", where="")),
    (
        "vwap per symbol",
        "SELECT symbol, vwap(close, volume) FROM stock_topic GROUP BY symbol ORDER BY symbol",
        "SELECT symbol, sum(close * volume) / sum(volume) FROM t GROUP BY symbol ORDER BY symbol",
    ),
    (
        "vwap per symbol, one day (pruned)",
        "SELECT symbol, vwap(close, volume) FROM stock_topic WHERE date = '{day}' GROUP BY symbol ORDER BY symbol",
        "SELECT symbol, sum(close * volume) / sum(volume) FROM t WHERE date = '{day}' GROUP BY symbol ORDER BY symbol",
    ),
    (
        "latest row per symbol (row_number)",
        "SELECT symbol, ts, close FROM (SELECT symbol, ts, close, row_number() OVER "
        "(PARTITION BY symbol ORDER BY ts DESC) AS rn FROM {t}) WHERE rn = 1 ORDER BY symbol",
        None,
    ),
    (
        "returns per symbol (lag)",
        "SELECT symbol, count(r), avg(r), min(r), max(r) FROM (SELECT symbol, close / lag(close) OVER "
        "(PARTITION BY symbol ORDER BY ts) - 1 AS r FROM {t}) GROUP BY symbol ORDER BY symbol",
        None,
    ),
    (
        "daily volatility per symbol (stddev of log returns)",
        "SELECT symbol, date, stddev(r) FROM (SELECT symbol, date, ln(close / lag(close) OVER "
        "(PARTITION BY symbol, date ORDER BY ts)) AS r FROM {t}) GROUP BY symbol, date ORDER BY symbol, date",
        None,
    ),
    (
        "20-bar moving average, one symbol, one day",
        "SELECT ts, avg(close) OVER (ORDER BY ts ROWS BETWEEN 19 PRECEDING AND CURRENT ROW) FROM {t} "
        "WHERE symbol = '{sym}' AND date = '{day}' ORDER BY ts",
        None,
    ),
    (
        "rows of one symbol on one day (pruned)",
        "SELECT ts, open, high, low, close, volume FROM {t} WHERE symbol = '{sym}' AND date = '{day}' ORDER BY ts",
        None,
    ),
    (
        "count(distinct close) per date",
        "SELECT date, count(DISTINCT close) FROM {t} GROUP BY date ORDER BY date",
        None,
    ),
    (
        "price-range filter (top 1% of closes)",
        "SELECT symbol, count(*), avg(volume) FROM {t} WHERE close BETWEEN {lo} AND {hi} GROUP BY symbol ORDER BY symbol",
        None,
    ),
    (
        "full scan of every column",
        "SELECT count(*), sum(open), sum(high), sum(low), sum(close), sum(volume), min(ts), max(ts), "
        "count(DISTINCT symbol), count(DISTINCT date) FROM {t}",
        None,
    ),
]


def numeric(v):
    """The value as a float, or None for text, timestamps and NULLs."""
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def checksums(rows):
    """Per column: the sum of its numeric values (None when the column holds none)."""
    if not rows:
        return []
    sums = []
    for col in zip(*rows):
        values = [x for x in map(numeric, col) if x is not None and not math.isnan(x)]
        sums.append(math.fsum(values) if values else None)
    return sums


def agree(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def to_arrow(relation):
    """The result as an Arrow table (`to_arrow_table` since DuckDB 1.4, `arrow` before)."""
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    return fetch()


def median_ms(times):
    return statistics.median(times)


class TicklakeShell:
    """One `ticklake sql --timing --format csv` process, fed one statement at a time over a pipe.

    After each statement a marker statement is sent; its header on standard output ends the
    statement's CSV, and its `time:` line on standard error ends the statement's messages.
    """

    MARKER = "tl_bench_end"

    def __init__(self, bin_, lake_dir, history):
        self.proc = subprocess.Popen(
            [bin_, "sql", "--timing", "--format", "csv", "--history", history],
            cwd=lake_dir, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, bufsize=1,
        )

    def run(self, sql):
        """(ms the statement took, its result's rows as lists of strings, None for NULL)."""
        self.proc.stdin.write(f"{sql};\nSELECT 1 AS {self.MARKER};\n")
        self.proc.stdin.flush()
        # Standard error first, up to the statement's time; then its CSV, which may be larger than the
        # pipe holds; then standard error up to the marker's time (any error message comes before it).
        times, messages = [], []

        def read_messages():
            while True:
                line = self.proc.stderr.readline()
                if not line:
                    sys.exit(f"ticklake sql stopped on {sql!r}:\n" + "".join(messages))
                if line.startswith("time:"):
                    times.append(float(line.split()[1]))
                    return
                messages.append(line)

        read_messages()
        lines = []
        while True:
            line = self.proc.stdout.readline()
            if not line:
                sys.exit(f"ticklake sql stopped on {sql!r}")
            if line.rstrip("\r\n") == self.MARKER:
                self.proc.stdout.readline()  # the marker's value
                break
            lines.append(line)
        read_messages()
        if any(m.startswith("error:") for m in messages):
            sys.exit(f"ticklake failed on {sql!r}:\n" + "".join(messages))
        rows = list(csv.reader(io.StringIO("".join(lines))))[1:]
        return times[0], [[None if v == "" else v for v in r] for r in rows]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def duckdb_ms(con, sql):
    start = time.perf_counter()
    to_arrow(con.sql(sql))
    return (time.perf_counter() - start) * 1000


def machine():
    """Cores, CPU model and memory of this machine (Linux)."""
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return {"cores": os.cpu_count(), "cpu": model, "memory_gib": round(mem_kib / 2**20, 1)}


def commit():
    """The short commit of the checkout this runs in (the binary's, when bench.sh built it), or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)), check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def main():
    bin_, lake_dir, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    json_out = sys.argv[4] if len(sys.argv) > 4 else None
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"CREATE VIEW t AS SELECT * FROM read_parquet('{lake_dir}/lake/stock_topic/*/*/*.parquet', "
        "hive_partitioning = true, hive_types = {'date': VARCHAR, 'symbol': VARCHAR})"
    )
    rows, symbols, days, hi_close = con.execute(
        "SELECT count(*), count(DISTINCT symbol), count(DISTINCT date), max(close) FROM t"
    ).fetchall()[0]
    sym, day = con.execute("SELECT min(symbol), min(date) FROM t").fetchall()[0]
    lo = con.execute("SELECT quantile_disc(close, 0.99) FROM t").fetchall()[0][0]
    params = {"sym": sym, "day": day, "lo": repr(lo), "hi": repr(hi_close)}
    print(f"lake: {rows} rows, {symbols} symbols, {days} dates; duckdb {duckdb.__version__}; "
          f"median of {runs} warm runs each, interleaved, in-process times (no start-up); "
          "every result checked on both engines")
    print()
    print("| query | ticklake ms | DuckDB ms | ratio |")
    print("|---|---:|---:|---:|")
    results = []
    history = tempfile.TemporaryDirectory()
    shell = TicklakeShell(bin_, lake_dir, os.path.join(history.name, "history"))
    for name, ours, theirs in QUERIES:
        ours_sql = ours.format(t="stock_topic", **params)
        duck_sql = (theirs or ours).format(t="t", **params)
        # The warm-up run of each engine gives the answers to compare.
        _, our_rows = shell.run(ours_sql)
        duck_rows = con.execute(duck_sql).fetchall()
        ours_sums, duck_sums = checksums(our_rows), checksums(duck_rows)
        if len(our_rows) != len(duck_rows) or len(ours_sums) != len(duck_sums) or not all(
            agree(a, b) for a, b in zip(ours_sums, duck_sums)
        ):
            sys.exit(
                f"results differ on {name!r}: ticklake {len(our_rows)} rows, column sums {ours_sums}; "
                f"DuckDB {len(duck_rows)} rows, column sums {duck_sums}\n  ticklake: {ours_sql}\n  DuckDB: {duck_sql}"
            )
        our_times, duck_times = [], []
        for round_ in range(runs):
            if round_ % 2 == 0:
                our_times.append(shell.run(ours_sql)[0])
                duck_times.append(duckdb_ms(con, duck_sql))
            else:
                duck_times.append(duckdb_ms(con, duck_sql))
                our_times.append(shell.run(ours_sql)[0])
        ms, duck_ms = median_ms(our_times), median_ms(duck_times)
        print(f"| {name} | {ms:.1f} | {duck_ms:.1f} | {ms / duck_ms:.2f}x |", flush=True)
        results.append({
            "query": name, "ticklake_sql": ours_sql, "duckdb_sql": duck_sql, "rows": len(our_rows),
            "ticklake_ms": ms, "duckdb_ms": duck_ms, "ratio": ms / duck_ms,
            "ticklake_runs_ms": our_times, "duckdb_runs_ms": duck_times,
        })
    shell.close()
    history.cleanup()
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"machine": machine(), "date": datetime.date.today().isoformat(), "commit": commit(),
                       "lake_rows": rows, "symbols": symbols, "dates": days, "runs": runs, "interleaved": True,
                       "duckdb": duckdb.__version__, "queries": results}, f, indent=2)


if __name__ == "__main__":
    main()
