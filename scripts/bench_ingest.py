"""Ingest runs for `scripts/bench.sh --ingest` (and `--report`): every way into the lake, the broker's own
ceiling beside it, and freshness at three rates, written to a JSON file.

    bench_ingest.py <ticklake binary> <work dir> <records> <out json> <kafka brokers>

S3 runs use the moto server that AWS_ENDPOINT_URL points at (bucket `bench`, created by the caller).

- **ingest**: `produce --simulate` of <records> records (100 symbols, 4 partitions) into the embedded log
  and into Apache Kafka, then `sink --once` of each topic into a local and a moto S3 lake, as a Hive and an
  Iceberg table (eight sinks, each its own consumer group and table).
- **end to end**: producer and sink running at once, from the producer's start until the lake holds
  every record (embedded log and Kafka, local Hive lake).
- **the broker's ceiling**: kcat (librdkafka alone: no JSON, no Arrow, no Parquet) producing the same
  messages into a topic of the same shape (lz4, idempotent, 4 partitions) and consuming them back.
- **freshness**: a live feed (event time = now) at 1,000, 10,000 and 100,000 records/s for
  BENCH_FRESHNESS_SECONDS (90) into a running sink, with its default settings (a flush every second,
  compaction every minute) and with a 5 s flush and no compaction; the sink's record age p50/p99, and the
  files a query then reads (those at the partitions' locations in the catalog).

Nothing is reported before it is checked: every lake must hold exactly <records> records of 100 symbols
with the sum of closes DuckDB reads from the Parquet files of that bus's local Hive lake; kcat must
consume as many messages as it produced; every freshness lake must hold every record sent.
"""

import datetime
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse

import duckdb

UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}
SYMBOLS = 100


def size(text):
    number, unit = text.split()
    return float(number) * UNITS[unit]


def run(cmd, cwd, stdout=subprocess.PIPE):
    done = subprocess.run(cmd, cwd=cwd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def timed(cmd, cwd, stdout=subprocess.PIPE):
    t0 = time.time()
    out = run(cmd, cwd, stdout)
    return time.time() - t0, out


def sink_summary(out, name):
    written = re.search(r"(\d+) records written to .* in (\d+) files \(([\d.]+ \w+)\).* in ([\d.]+)s \((\d+) records/s\)", out)
    rss = re.search(r"peak memory \(RSS\): ([\d.]+ \w+)", out)
    if not written or not rss:
        sys.exit(f"unexpected sink summary in {name}:\n{out}")
    return {
        "records": int(written.group(1)),
        "files": int(written.group(2)),
        "bytes": size(written.group(3)),
        "seconds": float(written.group(4)),
        "records_per_s": int(written.group(5)),
        "peak_rss_bytes": size(rss.group(1)),
    }


def lake_totals(binary, cwd, args, table):
    """count(*), sum(close) and count(DISTINCT symbol) of a table, through ticklake's query engine."""
    line = run([binary, "-q", *args, "query", "--format", "csv",
                f"SELECT count(*), sum(close), count(DISTINCT symbol) FROM {table}"], cwd).strip().splitlines()[-1]
    count, total, symbols = line.split(",")
    return int(count), float(total), int(symbols)


def check(name, got, records, anchor):
    count, total, symbols = got
    if count != records or symbols != SYMBOLS or not math.isclose(total, anchor, rel_tol=1e-9):
        sys.exit(f"{name}: the lake holds {count} records of {symbols} symbols, sum(close) {total}; "
                 f"expected {records} of {SYMBOLS}, {anchor}")


def ingest(binary, work, records, brokers):
    runs, produced, anchors = [], {}, {}
    for bus in ("embedded", "kafka"):
        d = os.path.join(work, f"ingest-{bus}")
        os.makedirs(d)
        bus_args = ["--brokers", brokers] if bus == "kafka" else ["--log-dir", "lake/_ticklake/log"]
        topic = ["--topic", f"ingest_{bus}"]
        seconds, _ = timed([binary, "-q", *bus_args, *topic, "produce", "--simulate", "--symbols", str(SYMBOLS),
                            "--count", str(records), "--partitions", "4"], d)
        produced[bus] = {"records": records, "seconds": seconds, "records_per_s": records / seconds}
        for store in ("local", "s3"):
            lake = ["--lake", f"s3://bench/{bus}"] if store == "s3" else []
            for fmt in ("hive", "iceberg"):
                table = f"{store}_{fmt}"
                name = f"{bus} -> {store} {fmt}"
                out = run([binary, "-q", *bus_args, *topic, *lake, "sink", "--once", "--table", table,
                           "--group", table, "--table-format", fmt], d)
                r = {"bus": bus, "store": store, "table_format": fmt, **sink_summary(out, name)}
                if (store, fmt) == ("local", "hive"):
                    # The independent anchor: DuckDB reading the Parquet files themselves.
                    glob = os.path.join(d, "lake", table, "**", "*.parquet")
                    count, total = duckdb.connect().execute(f"SELECT count(*), sum(close) FROM read_parquet('{glob}')").fetchone()
                    if count != records:
                        sys.exit(f"{name}: DuckDB reads {count} records from the files, expected {records}")
                    anchors[bus] = total
                check(name, lake_totals(binary, d, [*lake], table), records, anchors[bus])
                r["verified"] = True
                runs.append(r)
                print(f"{name}: {r['records_per_s']:,} records/s, {r['files']} files, "
                      f"peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
        if bus == "embedded":
            subprocess.run(["rm", "-rf", d])
    return produced, runs


def end_to_end(binary, work, records, brokers):
    """Producer and sink at once, until the lake holds every record."""
    results = []
    for bus in ("embedded", "kafka"):
        d = os.path.join(work, f"e2e-{bus}")
        os.makedirs(d)
        bus_args = ["--brokers", brokers] if bus == "kafka" else []
        topic = ["--topic", f"e2e_{bus}"]
        t0 = time.time()
        producer = subprocess.Popen([binary, "-q", *bus_args, *topic, "produce", "--simulate", "--symbols",
                                     str(SYMBOLS), "--count", str(records), "--partitions", "4"],
                                    cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        # A sink --once stops when it has drained the topic, which may be before the producer is done:
        # another one takes the rest.
        written = 0
        while True:
            done = producer.poll() is not None
            out = run([binary, "-q", *bus_args, *topic, "sink", "--once"], d)
            took = sink_summary(out, f"end to end on {bus}")["records"]
            written += took
            if producer.poll() not in (None, 0):
                sys.exit(f"the producer failed: {producer.stderr.read()[-4000:]}")
            if done and (written >= records or took == 0):
                break
        seconds = time.time() - t0
        producer.wait()
        table = f"e2e_{bus}"
        count, _, symbols = lake_totals(binary, d, [], table)
        if count != records or symbols != SYMBOLS:
            sys.exit(f"end to end on {bus}: the lake holds {count} records of {symbols} symbols")
        results.append({"bus": bus, "records": records, "seconds": seconds, "records_per_s": records / seconds,
                        "verified": True})
        print(f"end to end on {bus}: {records / seconds:,.0f} records/s", flush=True)
        subprocess.run(["rm", "-rf", d])
    return results


def ceiling(binary, work, records, brokers):
    """kcat producing and consuming the messages ticklake put on Kafka, beside ticklake's own consume."""
    d = os.path.join(work, "ingest-kafka")
    messages = os.path.join(d, "messages.jsonl")
    with open(messages, "w") as f:
        consume_s, _ = timed([binary, "-q", "--brokers", brokers, "--topic", "ingest_kafka", "consume", "--values"],
                             d, stdout=f)
    with open(messages) as f:
        n = sum(1 for _ in f)
    if n != records:
        sys.exit(f"ticklake consume read {n} messages, expected {records}")
    # The kcat topic gets the same shape: 4 partitions (ticklake creates it, then has nothing to send).
    subprocess.run([binary, "-q", "--brokers", brokers, "--topic", "ceiling", "produce", "--simulate", "--count",
                    "0", "--partitions", "4"], cwd=d, capture_output=True)
    produce_s, _ = timed(["kcat", "-P", "-b", brokers, "-t", "ceiling", "-z", "lz4", "-X", "enable.idempotence=true",
                          "-X", "linger.ms=20", "-l", messages], d)
    os.remove(messages)
    # Into a file, as ticklake's consume above (through a pipe into Python, kcat took twice as long).
    consumed = os.path.join(d, "ceiling.jsonl")
    with open(consumed, "wb") as f:
        kcat_consume_s, _ = timed(["kcat", "-C", "-b", brokers, "-t", "ceiling", "-o", "beginning", "-e", "-q"],
                                  d, stdout=f)
    with open(consumed, "rb") as f:
        got = sum(1 for _ in f)
    os.remove(consumed)
    if got != records:
        sys.exit(f"kcat consumed {got} messages, expected {records}")
    return {"records": records, "kcat_produce_s": produce_s, "kcat_consume_s": kcat_consume_s,
            "ticklake_consume_s": consume_s, "verified": True}


def visible_files(lake):
    """The Parquet files a query of stock_topic reads: those in each partition's location in the embedded
    catalog (the sink's folder, or the merged folder a compaction switched it to). Returns (count, bytes)."""
    db = sqlite3.connect(os.path.join(lake, "_ticklake", "catalog.sqlite"))
    try:
        locations = [r[0] for r in db.execute(
            "SELECT location FROM partitions WHERE table_name = 'stock_topic'")]
    finally:
        db.close()
    count, size = 0, 0
    for location in locations:
        folder = urllib.parse.unquote(urllib.parse.urlparse(location).path)
        for name in os.listdir(folder):
            if name.endswith(".parquet") and not name.startswith(("_", ".")):
                count += 1
                size += os.path.getsize(os.path.join(folder, name))
    return count, size


# The sink's settings measured: its defaults (a Hive Parquet table in the embedded catalog: a flush every
# second, the partitions it wrote compacted every minute), and the previous defaults (5 s, no compaction).
FRESHNESS_SETTINGS = (
    ("1s, compaction every 1m (default)", []),
    ("5s, no compaction", ["--flush-interval", "5s", "--compact-every", "0s"]),
)


def freshness(binary, work, seconds):
    results = []
    for rate in (1_000, 10_000, 100_000):
        for label, flush_args in FRESHNESS_SETTINGS:
            flush = flush_args[1] if flush_args else "default"
            d = os.path.join(work, f"fresh-{rate}-{flush}")
            os.makedirs(d)
            count = rate * seconds
            interval_us = SYMBOLS * 1_000_000 // rate
            producer = subprocess.Popen([binary, "-q", "produce", "--simulate", "--symbols", str(SYMBOLS), "--interval",
                                         f"{interval_us}us", "--start", "now", "--rate", str(rate), "--count",
                                         str(count)], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(0.5)
            sink = subprocess.Popen([binary, "-q", "sink", *flush_args], cwd=d, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            if producer.wait() != 0:
                sys.exit(f"freshness at {rate}/s: the producer failed: {producer.stderr.read()[-4000:]}")
            time.sleep(7)
            sink.send_signal(signal.SIGTERM)
            out, err = sink.communicate(timeout=120)
            age = re.search(r"p50 ([\d.]+)s, p99 ([\d.]+)s, max ([\d.]+)s", out)
            if sink.returncode != 0 or not age:
                sys.exit(f"freshness at {rate}/s: the sink said:\n{out}\n{err[-4000:]}")
            got, _, _ = lake_totals(binary, d, [], "stock_topic")
            if got != count:
                sys.exit(f"freshness at {rate}/s: the lake holds {got} of {count} records")
            files, size = visible_files(os.path.join(d, "lake"))
            r = {"rate": rate, "flush_interval": label, "default": not flush_args, "seconds": seconds,
                 "records": count, "p50_s": float(age.group(1)),
                 "p99_s": float(age.group(2)), "max_s": float(age.group(3)),
                 "files_read": files, "mean_file_bytes": size // max(files, 1), "verified": True}
            results.append(r)
            print(f"freshness at {rate:,}/s, flush {r['flush_interval']}: p50 {r['p50_s']}s, p99 {r['p99_s']}s, "
                  f"{files} files read by a query", flush=True)
            subprocess.run(["rm", "-rf", d])
    return results


def main():
    binary, work, records, out, brokers = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    produced, runs = ingest(binary, work, records, brokers)
    broker = ceiling(binary, work, records, brokers)
    subprocess.run(["rm", "-rf", os.path.join(work, "ingest-kafka")])
    e2e = end_to_end(binary, work, records, brokers)
    fresh = freshness(binary, work, int(os.environ.get("BENCH_FRESHNESS_SECONDS", "90")))
    result = {"machine": os.environ.get("BENCH_MACHINE"), "date": datetime.date.today().isoformat(),
              "records": records, "symbols": SYMBOLS, "partitions": 4, "produce": produced, "sink": runs,
              "ceiling": broker, "end_to_end": e2e, "freshness": fresh}
    json.dump(result, open(out, "w"), indent=2)
    print(f"(written to {out})")


if __name__ == "__main__":
    main()
