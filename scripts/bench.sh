#!/usr/bin/env bash
# Reproduces the numbers in BENCHMARKS.md: criterion micro-benchmarks (CSV parse, simulator, JSON codec)
# and end-to-end runs of the release binary: produce into the embedded log and into Apache Kafka (beside
# kcat, plain librdkafka, producing and consuming the same messages in the same run), and the sink.
#
#   scripts/bench.sh --report     ONE RUN OF EVERYTHING, verified, into BENCHMARKS.md: --ingest, --query,
#                                 --seed, --scaling and scripts/bench_connect.sh, each writing its JSON to
#                                 benchmarks/, then scripts/bench_report.py lays them out with each goal of
#                                 issue 10 beside its measure, between the markers at the top of
#                                 BENCHMARKS.md (BENCH_CONNECT=0 skips the Connect peer,
#                                 BENCH_REPORT_100M=1 adds the queries at 100 M rows; about 25 minutes on
#                                 2 cores, about 40 with the 100 M rows)
#   scripts/bench.sh --ingest     every way into the lake, verified: BENCH_INGEST_COUNT (10,000,000)
#                                 records into the embedded log and Apache Kafka, each sunk into a local
#                                 and a moto S3 lake as Hive and Iceberg; producer and sink at once; kcat
#                                 (the broker's ceiling) on the same messages; freshness at 1k, 10k and
#                                 100k records/s; benchmarks/ingest.json (scripts/bench_ingest.py)
#   scripts/bench.sh              the older runs: criterion, produce, Kafka beside kcat, sink, freshness
#   scripts/bench.sh --quick      skip criterion
#   scripts/bench.sh --sink-only  only the sink runs
#   scripts/bench.sh --kafka      only the Apache Kafka runs (ticklake and kcat side by side)
#   scripts/bench.sh --query      only the query latencies: 15 queries on a 10M-row simulated lake,
#                                 ticklake and DuckDB side by side on the same files, their warm runs
#                                 interleaved, every answer checked on both engines first; also
#                                 written to benchmarks/queries.json
#                                 (BENCH_QUERY_ROWS, _RUNS, _JSON change the lake size, runs, file)
#   scripts/bench.sh --compaction a live feed (event time = wall time) at a steady rate into a running
#                                 sink, Hive and Iceberg, at 10 and 10,000 symbols: files per partition
#                                 and their size before and after `ticklake compact`, its throughput,
#                                 query latency before and after, Iceberg checkpoint latency; then the
#                                 sink's drain speed, Hive vs Iceberg, on the same log, and the Iceberg
#                                 checkpoint latency on local disk and on moto S3 (SQL and Glue catalogs)
#                                 (BENCH_COMPACTION_SECONDS, _RATE, _SYMBOLS, _FORMATS pick the runs;
#                                 BENCH_COMPACTION_DRAIN=0 skips the drain and latency runs)
#   scripts/bench.sh --iceberg-latency  only that checkpoint latency
#   scripts/bench.sh --seed       the seed's Python pipeline (scripts/bench_seed.py: pandas and kafka-python
#                                 producer, a consumer writing one JSON object per message to S3 with
#                                 boto3) against ticklake on the same Apache Kafka and moto S3, every
#                                 output checked (object count, lake count, sum of closes); written to
#                                 benchmarks/seed.json (BENCH_SEED_COUNT: the seed's records, 10,000)
#   scripts/bench.sh --serve      `ticklake serve` under load: each route (SQL, bars, latest) under wrk
#                                 at 1 and 16 connections on a 2,000,000-record lake, every answer
#                                 checked against DuckDB first, and the live tail's push latency
#                                 (scripts/bench_serve.py; installs wrk; benchmarks/serve.json;
#                                 BENCH_SERVE_RECORDS, BENCH_SERVE_SECONDS)
#   scripts/bench.sh --scaling    the sink's records/s and peak RSS at 10, 100, 1,000 and 10,000 symbols
#                                 and at 1, 4 and 16 partitions (embedded log and Apache Kafka), every
#                                 lake read back first; benchmarks/scaling.json and two PNG charts
#                                 (BENCH_SCALING_COUNT: records per run, 2,000,000)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TICKLAKE_CACHE/target}
COUNT=${BENCH_COUNT:-1000000}
SYMBOLS=${BENCH_SYMBOLS:-100}

export BENCH_MACHINE="$(bench_machine)"
echo "machine: $BENCH_MACHINE"
MODE=${1:-}
if [ "$MODE" = "--report" ]; then
  # Each part is its own run of this script (its own services and work folder), on one release build.
  if [ -z "${BENCH_BIN:-}" ]; then
    cargo build --release --locked -p ticklake-cli --quiet
  fi
  export BENCH_BIN=${BENCH_BIN:-$CARGO_TARGET_DIR/release/ticklake}
  for part in --ingest --query --seed --scaling; do
    echo "== scripts/bench.sh $part"
    "$0" "$part"
  done
  if [ "${BENCH_REPORT_100M:-0}" = 1 ]; then
    echo "== scripts/bench.sh --query at 100 M rows"
    BENCH_QUERY_ROWS=100000000 BENCH_QUERY_RUNS=3 BENCH_QUERY_JSON=benchmarks/queries-100m.json "$0" --query
  fi
  if [ "${BENCH_CONNECT:-1}" != 0 ]; then
    echo "== scripts/bench_connect.sh"
    # The peer is not ticklake: if it does not fill its table in time, the report is still written,
    # with the peer's last run marked as not from this one.
    if ! scripts/bench_connect.sh; then
      echo "== the Connect peer did not finish (BENCH_CONNECT_TIMEOUT=${BENCH_CONNECT_TIMEOUT:-900} s); the report keeps its last run, marked"
      export BENCH_CONNECT_STALE=1
    fi
  else
    export BENCH_CONNECT_STALE=skipped
  fi
  "$MOTO_VENV/bin/python" scripts/bench_report.py benchmarks BENCHMARKS.md "$(git rev-parse --short HEAD)"
  exit 0
fi
if [ -z "$MODE" ]; then
  cargo bench -p ticklake-model -p ticklake-feed --locked --benches 2>&1 \
    | grep -E '^(codec|feed)/|thrpt:' | sed 's/^ *//'
fi

# BENCH_BIN runs another build of ticklake (say, to try this script with a debug build).
if [ -z "${BENCH_BIN:-}" ]; then
  cargo build --release --locked -p ticklake-cli --quiet
fi
bin=${BENCH_BIN:-$CARGO_TARGET_DIR/release/ticklake}
work=$(mktemp -d "${TMPDIR:-/tmp}/ticklake-bench.XXXXXX")
cleanup() { stop_kafka; stop_moto; rm -rf "$work"; }
trap cleanup EXIT

# The Iceberg checkpoint latency (write + commit of 250,000 records) on local disk and on moto S3, with
# the SQL and Glue catalogs, draining the embedded log of the lake in $1.
iceberg_latency() {
  local d=$1 target lake group lat
  ensure_moto
  echo
  echo "== Iceberg checkpoint latency (write + commit of 250,000 records, 100 symbols): local disk, moto S3"
  echo "| lake | catalog | checkpoints | p50 | p99 | drain |"
  echo "|---|---|---|---|---|---|"
  start_moto "$work/moto" >/dev/null
  "$MOTO_VENV/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='$MOTO_URL', region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='x').create_bucket(Bucket='bench')"
  for target in "local embedded" "s3 embedded" "s3 glue"; do
    set -- $target
    lake=$d/lake; [ "$1" = s3 ] && lake=s3://bench/lake
    group="latency_$1_$2"
    (cd "$d" && AWS_ENDPOINT_URL=$MOTO_URL AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x AWS_REGION=us-east-1 \
      RUST_LOG=ticklake_sink=debug "$bin" sink --once --log-dir "$d/lake/_ticklake/log" --lake "$lake" --catalog "$2" \
      --table-format iceberg --table "$group" --group "$group" --flush-records 250000 >"$group.out" 2>"$group.log")
    lat=$({ grep -o 'committed in [0-9.]* ms' "$d/$group.log" || true; } | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END{if (NR) printf "%d | %.0f ms | %.0f ms", NR, a[int((NR+1)/2)], a[int(NR*0.99+0.999)]; else print "- | - | -"}')
    echo "| $1 | $2 | $lat | $(grep -o '[0-9.]* k\?records/s' "$d/$group.out" | head -1) |"
  done
}

if [ "$MODE" = "--iceberg-latency" ]; then
  d=$work/latency; mkdir -p "$d"
  (cd "$d" && "$bin" -q produce --simulate --symbols 100 --count "$COUNT" >/dev/null)
  iceberg_latency "$d"
  exit 0
fi

if [ "$MODE" = "--compaction" ]; then
  SECS=${BENCH_COMPACTION_SECONDS:-60}
  RATE=${BENCH_COMPACTION_RATE:-50000}
  RUNS=${BENCH_QUERY_RUNS:-3}
  n=$((SECS * RATE))
  # The median of $RUNS timings of a query script (one statement per line).
  median_ms() {
    local dir=$1 sql=$2
    for _ in $(seq "$RUNS"); do
      (cd "$dir" && "$bin" query --timing -o /dev/null "$sql" 2>&1 >/dev/null | awk '/^time:/{print $2}')
    done | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'
  }
  # Files per partition and their mean size, as readers see them (through the catalogs).
  layout() {
    local dir=$1 format=$2
    if [ "$format" = iceberg ]; then
      (cd "$dir" && "$bin" query --format csv "SHOW PARTITIONS stock_topic" | awk -F, 'NR>1{p++; f+=$2; b+=$4} END{print p","f","b}')
    else
      "$MOTO_VENV/bin/python" - "$dir/lake" <<'EOF'
import os, sqlite3, sys
lake = sys.argv[1]
db = sqlite3.connect(os.path.join(lake, "_ticklake", "catalog.sqlite"))
parts = files = size = 0
for (loc,) in db.execute("SELECT location FROM partitions WHERE table_name = 'stock_topic'"):
    parts += 1
    folder = loc[len("file://"):]
    for f in os.listdir(folder):
        p = os.path.join(folder, f)
        if os.path.isfile(p) and not f.startswith(("_", ".")):
            files += 1
            size += os.path.getsize(p)
print(f"{parts},{files},{size}")
EOF
    fi
  }
  ensure_moto
  echo "== compaction: a live feed at $RATE records/s for ${SECS}s into a running sink (5 s flushes), event time = wall time"
  echo "| symbols | table | partitions | files/partition before | mean file before | after | mean file after | compact | query before -> after (ms: count, vwap/symbol, 1-min bars of one symbol, one symbol) | checkpoint p50/p99 |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for symbols in ${BENCH_COMPACTION_SYMBOLS:-10 10000}; do
    # One bar per symbol every symbols/rate seconds keeps event time at wall-clock pace.
    interval_us=$((symbols * 1000000 / RATE))
    for format in ${BENCH_COMPACTION_FORMATS:-hive iceberg}; do
      d=$work/compaction-$symbols-$format
      mkdir -p "$d"
      (cd "$d" && RUST_LOG=ticklake_sink=debug exec "$bin" sink --table-format "$format" >sink.out 2>sink.log) &
      sink_pid=$!
      (cd "$d" && "$bin" -q produce --simulate --symbols "$symbols" --count "$n" --rate "$RATE" --interval "${interval_us}us" --seed 2 >/dev/null)
      sleep 8
      kill -TERM "$sink_pid"; wait "$sink_pid" || true
      sym=$(cd "$d" && "$bin" query --format csv "SELECT min(symbol) FROM stock_topic" | tail -1)
      queries=("SELECT count(*) FROM stock_topic" "SELECT symbol, vwap(close, volume) FROM stock_topic GROUP BY symbol" "SELECT * FROM ohlcv('stock_topic', '1 minute', '$sym')" "SELECT count(*), max(close) FROM stock_topic WHERE symbol = '$sym'")
      before=$(layout "$d" "$format")
      qb=(); for q in "${queries[@]}"; do qb+=("$(median_ms "$d" "$q")"); done
      compacted=$( (cd "$d" && "$bin" compact --older-than 0s --retention 0s) | { grep -o 'merged into.*' || echo "nothing merged"; } | head -1)
      (cd "$d" && "$bin" -q compact --older-than 0s --retention 0s >/dev/null)  # deletes what the first replaced
      after=$(layout "$d" "$format")
      qa=(); for q in "${queries[@]}"; do qa+=("$(median_ms "$d" "$q")"); done
      lat=$({ grep -o 'committed in [0-9.]* ms' "$d/sink.log" || true; } | awk '{print $3}' | sort -n | awk '{a[NR]=$1} END{if (NR) printf "%.0f / %.0f ms", a[int((NR+1)/2)], a[int(NR*0.99+0.999)]; else print "-"}')
      "$MOTO_VENV/bin/python" - "$symbols" "$format" "$before" "$after" "$compacted" "${qb[*]}" "${qa[*]}" "$lat" <<'EOF'
import sys
symbols, fmt, before, after, compacted, qb, qa, lat = sys.argv[1:]
def parse(s):
    p, f, b = (int(x or 0) for x in s.split(","))
    return p, f, b
pb, fb, bb = parse(before)
pa, fa, ba = parse(after)
kib = lambda b, f: f"{b / max(f, 1) / 1024:.0f} KiB"
pairs = " / ".join(f"{x} -> {y}" for x, y in zip(qb.split(), qa.split()))
print(f"| {symbols} | {fmt} | {pb} | {fb / max(pb, 1):.1f} | {kib(bb, fb)} | {fa / max(pa, 1):.1f} | {kib(ba, fa)} | {compacted} | {pairs} | {lat} |")
EOF
      rm -rf "$d"
    done
  done
  if [ "${BENCH_COMPACTION_DRAIN:-1}" = 0 ]; then
    exit 0
  fi
  echo
  echo "== sink drain speed, Hive vs Iceberg, the same $COUNT records (100 symbols) from one embedded log"
  d=$work/drain; mkdir -p "$d"
  (cd "$d" && "$bin" -q produce --simulate --symbols 100 --count "$COUNT" >/dev/null)
  for format in hive iceberg; do
    (cd "$d" && "$bin" sink --once --table-format "$format" --table "drain_$format" --group "drain_$format" | head -1)
  done
  iceberg_latency "$d"
  exit 0
fi

# Python tools the benchmark needs beyond the test venv's (the seed's libraries, the charts).
bench_python() {
  ensure_moto
  "$MOTO_VENV/bin/python" -c "import pandas, kafka, matplotlib" 2>/dev/null \
    || "$MOTO_VENV/bin/pip" install -q pandas kafka-python matplotlib >/dev/null
}

if [ "$MODE" = "--seed" ]; then
  # The seed's pipeline (scripts/bench_seed.py) against ticklake, on the same Apache Kafka and moto S3.
  SEED_COUNT=${BENCH_SEED_COUNT:-10000}
  bench_python
  ensure_kafka
  start_kafka "$work/kafka" >/dev/null
  start_moto "$work/moto" >/dev/null
  export AWS_ENDPOINT_URL=$MOTO_URL AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  "$MOTO_VENV/bin/python" -c "import boto3; [boto3.client('s3').create_bucket(Bucket=b) for b in ('seed', 'lake')]"
  csv=data/indexProcessed-HSI.csv root=$PWD
  s=$work/seed; mkdir -p "$s"
  echo "== the seed's pipeline (pandas + kafka-python producer, kafka-python consumer, one boto3 PUT per message), $SEED_COUNT records"
  "$MOTO_VENV/bin/python" -W ignore scripts/bench_seed.py produce "$KAFKA_ADDR" seed "$csv" "$SEED_COUNT" > "$s/produce.json"
  "$MOTO_VENV/bin/python" -W ignore scripts/bench_seed.py consume "$KAFKA_ADDR" seed seed "$SEED_COUNT" > "$s/consume.json"
  "$MOTO_VENV/bin/python" -W ignore scripts/bench_seed.py verify seed "$SEED_COUNT" > "$s/verify.json"
  # ticklake on the same broker and S3: the same file replayed in a loop, the sink into a Parquet lake on
  # S3, one folder per symbol as `ticklake demo` does for these daily bars (`date` folders would hold a
  # row or two each: 35 years of one index).
  secs() { python3 -c "import time; print(time.time())"; }
  for n in "$SEED_COUNT" "$COUNT"; do
    d=$work/ticklake-$n; mkdir -p "$d"
    echo "== ticklake: produce --source $csv --loop, sink --once into s3://lake/t$n, $n records"
    t0=$(secs)
    (cd "$d" && "$bin" -q --brokers "$KAFKA_ADDR" --topic "t$n" produce --source "$root/$csv" --loop --count "$n" >/dev/null)
    t1=$(secs)
    (cd "$d" && "$bin" -q --brokers "$KAFKA_ADDR" --topic "t$n" --lake "s3://lake/t$n" sink --once --partition-by symbol >/dev/null)
    t2=$(secs)
    got=$(cd "$d" && "$bin" -q --lake "s3://lake/t$n" query --format csv "SELECT count(*), sum(close) FROM t$n" | tail -1)
    echo "{\"records\": $n, \"produce_seconds\": $(python3 -c "print($t1-$t0)"), \"sink_seconds\": $(python3 -c "print($t2-$t1)"), \"lake\": \"$got\"}" > "$s/ticklake-$n.json"
  done
  "$MOTO_VENV/bin/python" - "$s" "$csv" "$SEED_COUNT" "$COUNT" "${BENCH_SEED_JSON:-benchmarks/seed.json}" <<'EOF'
import csv, json, math, os, sys
s, path, seed_n, big_n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
load = lambda name: json.load(open(os.path.join(s, name)))
produce, consume, verify = load("produce.json"), load("consume.json"), load("verify.json")
# Every check before any number: the seed's objects are all there with the closes it sent, and
# ticklake's lake holds every record of the looped file with the same sum of closes.
assert consume["records"] == seed_n, f"the seed's consumer wrote {consume['records']} of {seed_n}"
assert verify["objects"] == seed_n, f"S3 holds {verify['objects']} of the seed's {seed_n} objects"
assert math.isclose(verify["close_sum"], produce["close_sum"], rel_tol=1e-9), "the seed's objects lost closes"
closes = [float(row["Close"]) for row in csv.DictReader(open(path))]
runs = {}
for n in (seed_n, big_n):
    t = load(f"ticklake-{n}.json")
    count, total = t["lake"].split(",")
    expected = sum(closes[i % len(closes)] for i in range(n))
    assert int(count) == n, f"ticklake's lake holds {count} of {n} records"
    assert math.isclose(float(total), expected, rel_tol=1e-9), f"ticklake's sum of closes {total} != {expected}"
    runs[n] = t
seed_p = seed_n / produce["seconds"]
seed_c = seed_n / consume["seconds"]
seed_e = seed_n / (produce["seconds"] + consume["seconds"])
rows = [("the seed (Python)", seed_n, seed_p, seed_c, seed_e)]
for n, t in runs.items():
    rows.append(("ticklake", n, n / t["produce_seconds"], n / t["sink_seconds"],
                 n / (t["produce_seconds"] + t["sink_seconds"])))
print("| pipeline | records | produce records/s | consume -> S3 records/s | produce then consume, records/s | vs the seed |")
print("|---|---:|---:|---:|---:|---:|")
for name, n, p, c, e in rows:
    print(f"| {name} | {n:,} | {p:,.0f} | {c:,.0f} | {e:,.0f} | {e / seed_e:,.0f}x |")
json.dump({"machine": os.environ.get("BENCH_MACHINE"), "date": __import__("datetime").date.today().isoformat(),
           "seed": {"records": seed_n, "produce": produce, "consume": consume, "verify": verify},
           "ticklake": {str(n): t for n, t in runs.items()}}, open(out, "w"), indent=2)
print(f"(written to {out})")
EOF
  exit 0
fi

if [ "$MODE" = "--ingest" ]; then
  command -v kcat >/dev/null || { apt-get install -y -qq kcat >/dev/null; }
  ensure_kafka
  ensure_moto
  start_kafka "$work/kafka" >/dev/null
  start_moto "$work/moto" >/dev/null
  export AWS_ENDPOINT_URL=$MOTO_URL AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  "$MOTO_VENV/bin/python" -c "import boto3; boto3.client('s3').create_bucket(Bucket='bench')"
  echo "== ingest: ${BENCH_INGEST_COUNT:-10000000} records every way into the lake, the broker's ceiling, freshness"
  "$MOTO_VENV/bin/python" scripts/bench_ingest.py "$bin" "$work" "${BENCH_INGEST_COUNT:-10000000}" \
    "${BENCH_INGEST_JSON:-benchmarks/ingest.json}" "$KAFKA_ADDR"
  exit 0
fi

if [ "$MODE" = "--scaling" ]; then
  bench_python
  ensure_kafka
  start_kafka "$work/kafka" >/dev/null
  echo "== scaling: sink --once of ${BENCH_SCALING_COUNT:-2000000} records at 10-10,000 symbols and 1-16 partitions"
  "$MOTO_VENV/bin/python" scripts/bench_scaling.py "$bin" "$work" "${BENCH_SCALING_COUNT:-2000000}" \
    "${BENCH_SCALING_OUT:-benchmarks}" "$KAFKA_ADDR"
  exit 0
fi

if [ "$MODE" = "--serve" ]; then
  ensure_moto
  command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null \
    || { echo "error: the serving benchmark needs wrk, and apt-get install wrk failed" >&2; exit 1; }
  echo "== serve: each route under wrk at 1 and 16 connections, answers checked against DuckDB first; live push latency"
  "$MOTO_VENV/bin/python" scripts/bench_serve.py "$bin" "$work/serve" "${BENCH_SERVE_JSON:-benchmarks/serve.json}" \
    "${BENCH_SERVE_RECORDS:-2000000}" "${BENCH_SERVE_SECONDS:-10}"
  exit 0
fi

if [ "$MODE" = "--query" ]; then
  ROWS=${BENCH_QUERY_ROWS:-10000000}
  RUNS=${BENCH_QUERY_RUNS:-5}
  ensure_moto
  q=$work/query; mkdir -p "$q"
  echo "== queries: a lake of $ROWS simulated records, 10 symbols, 1 s bars (date,symbol partitions)"
  (cd "$q" && "$bin" -q produce --simulate --symbols 10 --count "$ROWS" >/dev/null)
  (cd "$q" && "$bin" -q sink --once --partition-by date,symbol | head -1)
  "$MOTO_VENV/bin/python" scripts/bench_queries.py "$bin" "$q" "$RUNS" "${BENCH_QUERY_JSON:-benchmarks/queries.json}"
  exit 0
fi

if [ "$MODE" != "--sink-only" ] && [ "$MODE" != "--kafka" ]; then
echo "== produce to the embedded log: $COUNT simulated records, $SYMBOLS symbols"
(cd "$work" && "$bin" -q produce --simulate --symbols "$SYMBOLS" --count "$COUNT") | tail -1
echo "== produce to the embedded log: the HSI sample, looped to $COUNT records"
(cd "$work" && "$bin" -q --topic csv produce --source "$OLDPWD/data/indexProcessed-HSI.csv" --loop --count "$COUNT") | tail -1
echo "== read back from the embedded log"
start=$(date +%s.%N)
n=$(cd "$work" && "$bin" -q consume --values | wc -l)
end=$(date +%s.%N)
python3 -c "print(f'{$n} records read in {$end-$start:.2f}s, {$n/($end-$start):.0f} records/s')"

fi

if [ -z "$MODE" ] || [ "$MODE" = "--quick" ] || [ "$MODE" = "--kafka" ]; then
# Apache Kafka on loopback, and kcat (librdkafka alone, no JSON, no Arrow) on the same messages: the
# broker's ceiling on this machine, measured in the same run.
command -v kcat >/dev/null || { apt-get install -y -qq kcat >/dev/null; }
ensure_kafka
start_kafka "$work/kafka" >/dev/null
secs() { python3 -c "import time; print(time.time())"; }
rate() { python3 -c "print(f'{$1} records in {$3-$2:.2f}s, {$1/($3-$2):,.0f} records/s')"; }
k=$work/k; mkdir -p "$k"
echo "== ticklake produce -> Apache Kafka $KAFKA_VERSION: $COUNT simulated records, lz4, transactional (200 ms), 4 partitions"
(cd "$k" && "$bin" -q --brokers "$KAFKA_ADDR" --topic tl produce --simulate --symbols "$SYMBOLS" --count "$COUNT") | tail -1
(cd "$k" && "$bin" -q --brokers "$KAFKA_ADDR" --topic tl consume --values > "$k/messages.jsonl")
echo "== kcat -P, the same $(wc -l < "$k/messages.jsonl") messages (one per line), lz4, idempotent, 4 partitions"
(cd "$k" && "$bin" -q --brokers "$KAFKA_ADDR" --topic plain produce --simulate --count 0 --partitions 4 >/dev/null 2>&1 || true)
t0=$(secs); kcat -P -b "$KAFKA_ADDR" -t plain -z lz4 -X enable.idempotence=true -X linger.ms=20 -l "$k/messages.jsonl"; t1=$(secs)
rate "$COUNT" "$t0" "$t1"
echo "== kcat -C, read them back"
t0=$(secs); n=$(kcat -C -b "$KAFKA_ADDR" -t plain -o beginning -e -q | wc -l); t1=$(secs)
rate "$n" "$t0" "$t1"
echo "== ticklake consume, read back"
t0=$(secs); n=$(cd "$k" && "$bin" -q --brokers "$KAFKA_ADDR" --topic tl consume --values | wc -l); t1=$(secs)
rate "$n" "$t0" "$t1"
echo "== ticklake sink --once: Apache Kafka -> local Parquet lake (date,symbol), ledger and catalog included"
(cd "$k" && "$bin" -q --brokers "$KAFKA_ADDR" --topic tl sink --once)
echo "== end to end: produce and sink at once ($COUNT records), until the lake holds them all"
t0=$(secs)
(cd "$k" && "$bin" -q --brokers "$KAFKA_ADDR" --topic e2e produce --simulate --symbols "$SYMBOLS" --count "$COUNT" >/dev/null) &
prod=$!
sleep 0.5
(cd "$k" && "$bin" -q --brokers "$KAFKA_ADDR" --topic e2e sink --once --flush-interval 1s > e2e.out)
wait $prod
(cd "$k" && "$bin" -q --brokers "$KAFKA_ADDR" --topic e2e sink --once >> e2e.out)
t1=$(secs)
cat "$k/e2e.out"
rate "$COUNT" "$t0" "$t1"
stop_kafka
[ "$MODE" = "--kafka" ] && exit 0
fi

# ---- sink ----
sink_run() { # <dir> <args...>: runs the sink in <dir>, prints its summary lines
  local dir=$1; shift
  (cd "$dir" && "$bin" -q "$@")
}

echo "== sink: embedded log -> local lake, $COUNT records, $SYMBOLS symbols (date,symbol partitions)"
s1=$work/sink-local; mkdir -p "$s1"
(cd "$s1" && "$bin" -q produce --simulate --symbols "$SYMBOLS" --count "$COUNT" >/dev/null)
sink_run "$s1" sink --once

echo "== sink alone: embedded log -> local lake, 10,000,000 records, 50 symbols (the sink prints its peak RSS)"
s0=$work/sink-10m; mkdir -p "$s0"
(cd "$s0" && "$bin" -q produce --simulate --symbols 50 --count 10000000 >/dev/null)
sink_run "$s0" sink --once
rm -rf "$s0"

echo "== end to end on the embedded log: produce and sink at once, $COUNT records, $SYMBOLS symbols"
e=$work/e2e-embedded; mkdir -p "$e"
t0=$(python3 -c "import time; print(time.time())")
(cd "$e" && "$bin" -q produce --simulate --symbols "$SYMBOLS" --count "$COUNT" >/dev/null) &
prod=$!
sleep 0.3
# The first sink may find the topic drained before the producer is done: a second one takes the rest.
sink_run "$e" sink --once | head -1
wait $prod
sink_run "$e" sink --once | head -1
t1=$(python3 -c "import time; print(time.time())")
python3 -c "print(f'end to end: {$COUNT} records in {$t1-$t0:.2f}s from the producer\'s start to the last commit, {$COUNT/($t1-$t0):,.0f} records/s')"
rm -rf "$e"

ensure_moto
start_moto "$work/moto" >/dev/null
export AWS_ENDPOINT_URL=$MOTO_URL AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
python3 -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('$MOTO_URL/bench', method='PUT'))"
echo "== sink: embedded log -> moto S3 lake, $COUNT records"
sink_run "$s1" --log-dir lake/_ticklake/log --lake s3://bench/lake sink --once --group to-s3
stop_moto

echo "== sink at a steady 50k records/s for 60 s (100 symbols, default flush settings)"
s2=$work/sink-steady; mkdir -p "$s2"
(cd "$s2" && "$bin" -q produce --simulate --symbols 100 --interval 2ms --start now --rate 50000 --count 3000000 >/dev/null) &
prod=$!
sleep 0.5
(cd "$s2" && exec "$bin" -q sink > sink.out) &
sinkpid=$!
wait $prod
sleep 6
kill -TERM $sinkpid; wait $sinkpid || true
cat "$s2/sink.out"
python3 - "$s2/lake/stock_topic" <<'PY'
import os, sys
sizes = [os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(sys.argv[1]) for f in fs if f.endswith('.parquet')]
print(f"{len(sizes)} files in ~60 s = {len(sizes)/1.0:.0f} files/minute, mean size {sum(sizes)/len(sizes)/1024:.0f} KiB")
PY

for spec in "slow:10:1s:10:600" "fast:100:2ms:50000:1500000"; do
  IFS=: read -r name syms interval rate count <<<"$spec"
  for flush in 5s 1s; do
    echo "== freshness, $name feed ($rate records/s, event time = now), --flush-interval $flush"
    d=$work/fresh-$name-$flush; mkdir -p "$d"
    (cd "$d" && "$bin" -q produce --simulate --symbols "$syms" --interval "$interval" --start now --rate "$rate" --count "$count" >/dev/null) &
    prod=$!
    sleep 0.5
    (cd "$d" && exec "$bin" -q sink --flush-interval "$flush" > sink.out) &
    sinkpid=$!
    wait $prod
    sleep 7
    kill -TERM $sinkpid; wait $sinkpid || true
    grep -E "records written|record age|peak" "$d/sink.out"
  done
done
