"""Serving benchmark: `ticklake serve` under concurrent load, and the live push latency (part of
scripts/bench.sh --serve).

usage: bench_serve.py BIN WORK_DIR JSON_OUT [RECORDS] [SECONDS]

1. A lake: RECORDS (2,000,000) simulated records of 50 symbols, one bar a second each, sunk into
   WORK_DIR (embedded log, local lake, embedded catalog).
2. `ticklake serve` on it, on loopback, with its defaults. Before anything is timed, each route's
   answer is checked against DuckDB on the same Parquet files (row counts, the sums of closes): a
   mismatch stops the benchmark.
3. Each route under load from wrk (one thread, keep-alive connections), SECONDS (10) per run, at 1 and
   16 connections: requests/s and latency p50/p90/p99 as wrk measures them. A run with any non-2xx
   answer, or with socket errors, stops the benchmark.
4. The push latency: a client subscribed to /api/live while `ticklake produce --clock` sends 10
   symbols' records for 60 s, one round every 370 ms (so bars begin at every phase of the server's
   100 ms push), each when the wall clock reaches its event time: for every one-second bar, the time
   from the event time of its first record (when it was sent) to the push that first carries the bar,
   p50/p90/p99/max.
"""
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

import duckdb

SYMBOLS = 50
# The live feeds: (symbols, a round of records every .. µs, seconds): a sparse one whose bars begin at
# every phase of the server's 100 ms push, and one of 10,000 records/s.
LIVE_FEEDS = [(10, 370_000, 60), (100, 10_000, 20)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, cwd):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return out.stdout


def get_json(url, body=None):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def check(what, ours, theirs):
    if isinstance(ours, float) or isinstance(theirs, float):
        ok = abs(ours - theirs) <= 1e-6 * max(abs(ours), abs(theirs), 1.0)
    else:
        ok = ours == theirs
    if not ok:
        sys.exit(f"mismatch, {what}: ticklake {ours!r}, DuckDB {theirs!r}")


LATENCY = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url, connections, seconds, script=None):
    """One wrk run: requests/s and latency percentiles (ms)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "30s"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit(f"wrk {url} met errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    lat = {f"p{p}": float(v) * UNIT[u] for p, v, u in LATENCY.findall(out)}
    return {"connections": connections, "requests": requests, "rps": rps, **lat}


def live_latency(bin_path, work, base, symbols, step_us, seconds):
    """Push latency of the live tail while `produce --clock` sends `symbols` records every `step_us`
    for `seconds` (each record sent when the clock reaches its event time): the time from the first
    record of each one-second bar to the push that first carries the bar, and, per push, the age of
    the newest record it carries."""
    first_seen = {}
    newest_age = []
    ready = threading.Event()
    stop = threading.Event()
    host, port = base.removeprefix("http://").split(":")

    def listen():
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        conn.request("GET", "/api/live")
        resp = conn.getresponse()
        event = None
        while not stop.is_set():
            line = resp.fp.readline()
            if not line:
                break
            arrived = time.time()
            line = line.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
                if event == "ready":
                    ready.set()
            elif line.startswith("data: ") and event == "bars":
                bars = json.loads(line[6:])
                for bar in bars:
                    first_seen.setdefault((bar["symbol"], bar["time"]), arrived)
                if bars:
                    newest_age.append((arrived - max(b["ts"] for b in bars) / 1e6) * 1000)
        conn.close()

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    if not ready.wait(30):
        sys.exit("the live tail never said ready")
    # From a whole second 2 s ahead, one round of records every step_us.
    start = int(time.time()) + 2
    start_text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
    rounds = seconds * 1_000_000 // step_us
    run([bin_path, "-q", "--topic", "live-bench", "produce", "--simulate", "--symbols", str(symbols),
         "--interval", f"{step_us // 1000}ms", "--start", start_text, "--clock",
         "--count", str(rounds * symbols), "--seed", "9"], work)
    time.sleep(1.0)
    stop.set()
    start_us = start * 1_000_000
    last_us = start_us + (rounds - 1) * step_us
    bar_seconds = last_us // 1_000_000 - start + 1
    if len(first_seen) != bar_seconds * symbols:
        sys.exit(f"the live tail pushed {len(first_seen)} one-second bars, not {bar_seconds * symbols}")

    def first_record_us(bar_s):
        # The first round at or after the bar's second began.
        k = -(-(max(bar_s * 1_000_000, start_us) - start_us) // step_us)
        return start_us + k * step_us

    def stats(values):
        v = sorted(values)
        q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
        return {"n": len(v), "p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": v[-1]}

    return {
        "symbols": symbols,
        "records_per_s": symbols * 1_000_000 / step_us,
        "seconds": seconds,
        "first_record_to_push": stats((a - first_record_us(s) / 1e6) * 1000 for (_, s), a in first_seen.items()),
        "newest_record_age_per_push": stats(newest_age),
    }


def main():
    bin_path, work, json_out = sys.argv[1], sys.argv[2], sys.argv[3]
    records = int(sys.argv[4]) if len(sys.argv) > 4 else 2_000_000
    seconds = int(sys.argv[5]) if len(sys.argv) > 5 else 10
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install wrk")
    os.makedirs(work, exist_ok=True)
    run([bin_path, "-q", "produce", "--simulate", "--symbols", str(SYMBOLS), "--count", str(records)], work)
    run([bin_path, "-q", "sink", "--once"], work)
    # The live tail's topic exists before the server starts (one record from long ago).
    run([bin_path, "-q", "--topic", "live-bench", "produce", "--simulate", "--symbols", "1", "--count", "1",
         "--start", "2020-01-01"], work)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [bin_path, "serve", "--listen", f"127.0.0.1:{port}", "--topic", "live-bench", "--table", "stock_topic"],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:
            if "serving the lake on" in line:
                break
        else:
            sys.exit("ticklake serve did not start")
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
        result = bench(bin_path, work, base, records, seconds)
    finally:
        server.terminate()
        server.wait()
    with open(json_out, "w") as f:
        json.dump(result, f, indent=2)
    report(result)


def bench(bin_path, work, base, records, seconds):
    # The answers, checked against DuckDB on the same files.
    con = duckdb.connect()
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet('{work}/lake/stock_topic/*/*/*.parquet', "
                "hive_partitioning = true)")
    sym = con.execute("SELECT min(symbol) FROM t").fetchone()[0]
    count_sql = "SELECT count(*) AS n, sum(close) AS s FROM stock_topic"
    agg_sql = "SELECT symbol, count(*) AS n, avg(close) AS a, sum(volume) AS v FROM stock_topic GROUP BY symbol ORDER BY symbol"
    ours = get_json(f"{base}/api/query", json.dumps({"sql": count_sql}).encode())["rows"][0]
    n, s = con.execute("SELECT count(*), sum(close) FROM t").fetchone()
    check("rows", ours["n"], n)
    check("rows", n, records)
    check("sum of closes", ours["s"], s)
    ours = get_json(f"{base}/api/query", json.dumps({"sql": agg_sql}).encode())["rows"]
    theirs = con.execute("SELECT symbol, count(*), sum(volume) FROM t GROUP BY 1 ORDER BY 1").fetchall()
    check("symbols", len(ours), len(theirs))
    for o, (tsym, tn, tv) in zip(ours, theirs):
        check(f"{tsym} rows", (o["symbol"], o["n"]), (tsym, tn))
        check(f"{tsym} volume", o["v"], tv)
    bars = {}
    for interval, bucket in (("1m", "1 minute"), ("1h", "1 hour")):
        answer = get_json(f"{base}/api/bars?symbol={sym}&interval={interval}&limit=10000")
        theirs = con.execute(
            f"SELECT count(*), sum(c) FROM (SELECT arg_max(close, ts) AS c FROM t WHERE symbol = ? "
            f"GROUP BY time_bucket(INTERVAL '{bucket}', ts))", [sym]).fetchone()
        check(f"{interval} bars of {sym}", len(answer["bars"]), theirs[0])
        check(f"{interval} closes of {sym}", sum(b["close"] for b in answer["bars"]), theirs[1])
        bars[interval] = len(answer["bars"])
    latest = get_json(f"{base}/api/latest")["latest"]
    check("symbols on the board", len(latest), SYMBOLS)
    theirs = dict(con.execute("SELECT symbol, arg_max(close, ts) FROM t GROUP BY 1").fetchall())
    for row in latest:
        check(f"latest price of {row['symbol']}", row["price"], theirs[row["symbol"]])

    scripts = {}
    for name, sql in (("count", count_sql), ("agg", agg_sql)):
        path = os.path.join(work, f"{name}.lua")
        with open(path, "w") as f:
            f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = {json.dumps(json.dumps({'sql': sql}))}\n")
        scripts[name] = path
    routes = [
        (f"POST /api/query: count(*), sum(close) over {records:,} rows", f"{base}/api/query", scripts["count"]),
        (f"POST /api/query: per-symbol aggregates ({SYMBOLS} rows)", f"{base}/api/query", scripts["agg"]),
        (f"GET /api/bars: 1m bars of one symbol ({bars['1m']} bars)", f"{base}/api/bars?symbol={sym}&interval=1m&limit=10000", None),
        (f"GET /api/bars: 1h bars of one symbol ({bars['1h']} bars)", f"{base}/api/bars?symbol={sym}&interval=1h", None),
        (f"GET /api/latest: {SYMBOLS} symbols", f"{base}/api/latest", None),
        ("GET /health", f"{base}/health", None),
    ]
    runs = []
    for name, url, script in routes:
        for connections in (1, 16):
            r = wrk(url, connections, seconds, script)
            print(f"{name}, {connections} conn: {r['rps']:.0f}/s, p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms",
                  flush=True)
            runs.append({"route": name, **r})
    live = []
    for symbols, step_us, secs in LIVE_FEEDS:
        r = live_latency(bin_path, work, base, symbols, step_us, secs)
        f = r["first_record_to_push"]
        print(f"live push at {r['records_per_s']:,.0f} records/s: first record to push p50 {f['p50']:.0f} ms, "
              f"p99 {f['p99']:.0f} ms", flush=True)
        live.append(r)
    return {"records": records, "symbols": SYMBOLS, "seconds": seconds, "runs": runs, "live": live,
            "machine": os.environ.get("BENCH_MACHINE", "")}


def report(r):
    print()
    print(f"| route | conns | requests/s | p50 | p90 | p99 |")
    print("|---|---|---|---|---|---|")
    for run_ in r["runs"]:
        print(f"| {run_['route']} | {run_['connections']} | {run_['rps']:,.0f} | {run_['p50']:.2f} ms "
              f"| {run_['p90']:.2f} ms | {run_['p99']:.2f} ms |")
    print()
    print("| live feed | one-second bars | first record -> push p50 / p90 / p99 / max | pushes | "
          "newest record's age at its push p50 / p99 |")
    print("|---|---|---|---|---|")
    for live in r["live"]:
        f, a = live["first_record_to_push"], live["newest_record_age_per_push"]
        print(f"| {live['symbols']} symbols, {live['records_per_s']:,.0f} records/s, {live['seconds']} s | {f['n']} "
              f"| {f['p50']:.0f} / {f['p90']:.0f} / {f['p99']:.0f} / {f['max']:.0f} ms | {a['n']} "
              f"| {a['p50']:.0f} / {a['p99']:.0f} ms |")


if __name__ == "__main__":
    main()
