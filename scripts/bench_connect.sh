#!/usr/bin/env bash
# A peer for ticklake's Kafka -> Iceberg numbers: Apache Kafka's Kafka Connect (standalone worker) running
# Apache Iceberg's Kafka Connect sink, on the same Apache Kafka broker and the same Iceberg REST catalog
# (local disk) the project's tests use, all assembled from Maven Central (scripts/connect/).
#
#   scripts/bench_connect.sh [COUNT]    COUNT simulated records (default 1,000,000, 100 symbols)
#
# ticklake produces COUNT records (JSON, 4 partitions) first; the Iceberg table is created through the REST
# catalog (symbol string, ts timestamptz, open..volume double); then Connect starts and the clock runs
# from its launch until the table's current snapshot holds COUNT records (the snapshots' own commit times,
# so the polling rate does not matter). The table is then read back with pyiceberg: its row count, distinct
# (symbol, ts) pairs and the exact sums of close and volume must equal the topic's.
#
# BENCH_CONNECT_JSON     where the result goes (benchmarks/connect.json)
# BENCH_CONNECT_TASKS    the sink's tasks.max (2; the topic has 4 partitions, the machine 2 cores)
# BENCH_CONNECT_COMMIT_MS  iceberg.control.commit.interval-ms (1000)
# BENCH_CONNECT_HEAP     the worker's -Xmx (2g)
# BENCH_CONNECT_TIMEOUT  seconds to wait for the table to fill (900)
# BENCH_BIN              the ticklake binary ($TICKLAKE_CACHE/target/release/ticklake)
# BENCH_KEEP=1           keep the work folder (logs, table) instead of deleting it
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

COUNT=${1:-1000000}
SYMBOLS=100
TASKS=${BENCH_CONNECT_TASKS:-2}
COMMIT_MS=${BENCH_CONNECT_COMMIT_MS:-1000}
HEAP=${BENCH_CONNECT_HEAP:-2g}
TIMEOUT=${BENCH_CONNECT_TIMEOUT:-900}
OUT=${BENCH_CONNECT_JSON:-benchmarks/connect.json}
bin=${BENCH_BIN:-$TICKLAKE_CACHE/target/release/ticklake}
[ -x "$bin" ] || { echo "no ticklake binary at $bin (cargo build --release, or set BENCH_BIN)" >&2; exit 1; }

pomver() { sed -n "s:.*<$2>\(.*\)</$2>.*:\1:p" "scripts/$1/pom.xml"; }
CONNECT_KAFKA=$(pomver connect kafka.version)
ICEBERG_VERSION=$(pomver connect/iceberg-sink iceberg.version)
HADOOP_VERSION=$(pomver connect/iceberg-sink hadoop.version)
CONNECT_HOME=$TICKLAKE_CACHE/connect-kafka$CONNECT_KAFKA-iceberg$ICEBERG_VERSION
maven_jars "Kafka Connect $CONNECT_KAFKA" connect "$CONNECT_HOME/worker"
maven_jars "Apache Iceberg's Kafka Connect sink $ICEBERG_VERSION" connect/iceberg-sink "$CONNECT_HOME/plugins/iceberg-sink"
ensure_kafka
ensure_iceberg_rest
ensure_moto
PY=$MOTO_VENV/bin/python

export BENCH_MACHINE="$(bench_machine)"
echo "machine: $BENCH_MACHINE"

work=$(mktemp -d "${TMPDIR:-/tmp}/ticklake-bench-connect.XXXXXX")
CONNECT_PID=
cleanup() {
  if [ -n "$CONNECT_PID" ]; then
    kill "$CONNECT_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$CONNECT_PID" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$CONNECT_PID" 2>/dev/null || true
    wait "$CONNECT_PID" 2>/dev/null || true
    CONNECT_PID=
  fi
  stop_iceberg_rest
  stop_kafka
  if [ "${BENCH_KEEP:-}" = 1 ]; then echo "== kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

start_kafka "$work/kafka"
start_iceberg_rest "$work/rest"

TOPIC=ticks
CONTROL=control-iceberg
echo "== ticklake produce -> Apache Kafka $KAFKA_VERSION: $COUNT simulated records, $SYMBOLS symbols, 4 partitions"
(cd "$work" && "$bin" -q --brokers "$KAFKA_ADDR" --topic "$TOPIC" produce --simulate --symbols "$SYMBOLS" --count "$COUNT") | tail -1

# What the table must hold, from the topic itself: count, distinct (symbol, ts), exact sums.
(cd "$work" && "$bin" -q --brokers "$KAFKA_ADDR" --topic "$TOPIC" consume --values) | "$PY" -c '
import json, math, sys
n, keys, close, volume = 0, set(), [], []
for line in sys.stdin:
    r = json.loads(line)
    n += 1
    keys.add((r["symbol"], r["ts"]))
    close.append(r["close"])
    volume.append(r.get("volume") or 0.0)
json.dump({"count": n, "distinct": len(keys), "close": math.fsum(close), "volume": math.fsum(volume)}, sys.stdout)
' > "$work/expected.json"
echo "== the topic: $(cat "$work/expected.json")"

# The sink's control topic (the broker creates no topics by itself), and the table through the REST catalog.
"$PY" - "$KAFKA_ADDR" "$CONTROL" <<'EOF'
import sys
from kafka.admin import KafkaAdminClient, NewTopic
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1])
admin.create_topics([NewTopic(sys.argv[2], num_partitions=1, replication_factor=1)])
admin.close()
EOF
"$PY" - "$ICEBERG_REST_URL" <<'EOF'
import sys
from pyiceberg.catalog import load_catalog
from pyiceberg.schema import Schema
from pyiceberg.types import DoubleType, NestedField, StringType, TimestamptzType
catalog = load_catalog("rest", type="rest", uri=sys.argv[1])
catalog.create_namespace("bench")
fields = [NestedField(1, "symbol", StringType()), NestedField(2, "ts", TimestamptzType())]
fields += [NestedField(i, name, DoubleType()) for i, name in enumerate(["open", "high", "low", "close", "volume"], 3)]
catalog.create_table("bench.ticks", Schema(*fields))
EOF

# The worker: plugin.discovery=service_load skips the ~10 s reflective scan of the plugin jars (they all carry
# ServiceLoader manifests, as the worker itself points out). offset.flush.interval.ms bounds how long an
# idle sink task blocks in poll(), and the Iceberg sink only answers the coordinator's START_COMMIT from
# put() and preCommit(): with the default 60 s, the last records of a drained topic would wait up to a
# minute for their commit whatever iceberg.control.commit.interval-ms says.
rest_port=$(free_port)
cat >"$work/worker.properties" <<PROPS
bootstrap.servers=$KAFKA_ADDR
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=false
offset.storage.file.filename=$work/connect.offsets
plugin.path=$CONNECT_HOME/plugins
plugin.discovery=service_load
listeners=http://127.0.0.1:$rest_port
offset.flush.interval.ms=$COMMIT_MS
PROPS
cat >"$work/iceberg-sink.properties" <<PROPS
name=iceberg-sink
connector.class=org.apache.iceberg.connect.IcebergSinkConnector
tasks.max=$TASKS
topics=$TOPIC
iceberg.tables=bench.ticks
iceberg.catalog.type=rest
iceberg.catalog.uri=$ICEBERG_REST_URL
iceberg.control.topic=$CONTROL
iceberg.control.commit.interval-ms=$COMMIT_MS
PROPS

echo "== Kafka Connect $CONNECT_KAFKA (standalone) + Apache Iceberg $ICEBERG_VERSION sink: tasks.max=$TASKS, commit interval $COMMIT_MS ms, -Xmx$HEAP"
t0=$(python3 -c 'import time; print(time.time())')
java -Xms512m -Xmx"$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
  -Dlog4j2.configurationFile="$PWD/scripts/connect/log4j2.yaml" -cp "$CONNECT_HOME/worker/*" \
  org.apache.kafka.connect.cli.ConnectStandalone "$work/worker.properties" "$work/iceberg-sink.properties" \
  >"$work/connect.log" 2>&1 &
CONNECT_PID=$!

# Waits for the table's current snapshot to hold COUNT records, then a few commit intervals more (a
# duplicate would show as more); times come from the snapshots' commit timestamps.
if ! python3 - "$ICEBERG_REST_URL" "$COUNT" "$t0" "$TIMEOUT" "$CONNECT_PID" "$COMMIT_MS" >"$work/timing.json" <<'EOF'
import json, os, sys, time, urllib.request
url, count, t0, timeout, pid, commit_ms = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])

def snapshots():
    with urllib.request.urlopen(f"{url}/v1/namespaces/bench/tables/ticks") as r:
        meta = json.load(r)["metadata"]
    snaps = sorted(meta.get("snapshots") or [], key=lambda s: s["sequence-number"])
    return meta.get("current-snapshot-id"), snaps

def total(s):
    return int(s["summary"].get("total-records", 0))

done_at = None
while True:
    time.sleep(0.25)
    try:
        os.kill(pid, 0)
    except OSError:
        print("Kafka Connect exited", file=sys.stderr)
        sys.exit(1)
    current, snaps = snapshots()
    have = total(snaps[-1]) if snaps else 0
    if done_at is None and have >= count:
        done_at = time.time()
    if done_at is not None and time.time() - done_at >= max(3.0, 3 * commit_ms / 1000):
        break
    if time.time() - t0 > timeout:
        print(f"timed out after {timeout:.0f} s with {have} of {count} records in the table", file=sys.stderr)
        sys.exit(1)
first = next(s for s in snaps if total(s) > 0)
last = next(s for s in snaps if total(s) >= count)
json.dump({
    "first_commit_s": first["timestamp-ms"] / 1000 - t0,
    "first_commit_records": total(first),
    "seconds": last["timestamp-ms"] / 1000 - t0,
    "final_records": total(snaps[-1]),
    "snapshots": len(snaps),
    "data_files": int(snaps[-1]["summary"].get("total-data-files", 0)),
}, sys.stdout)
EOF
then
  echo "Kafka Connect did not fill the table; the end of its log:" >&2
  tail -60 "$work/connect.log" >&2
  exit 1
fi
kill "$CONNECT_PID" 2>/dev/null || true
wait "$CONNECT_PID" 2>/dev/null || true
CONNECT_PID=

# Reads the table back and checks it against the topic, then writes the result.
"$PY" - "$ICEBERG_REST_URL" "$work/expected.json" "$work/timing.json" "$OUT" "$COUNT" "$TASKS" "$COMMIT_MS" "$HEAP" \
  "$CONNECT_KAFKA" "$ICEBERG_VERSION" "$HADOOP_VERSION" "$KAFKA_VERSION" "$(java -version 2>&1 | head -1)" <<'EOF'
import datetime, json, math, os, sys
from pyiceberg.catalog import load_catalog
url, expected, timing, out, count, tasks, commit_ms, heap, kc, ice, hadoop, kafka, java = sys.argv[1:]
count = int(count)
exp, t = json.load(open(expected)), json.load(open(timing))
table = load_catalog("rest", type="rest", uri=url).load_table("bench.ticks").scan().to_arrow()
got = {
    "count": table.num_rows,
    "distinct": len(set(zip(table["symbol"].to_pylist(), table["ts"].cast("int64").to_pylist()))),
    "close": math.fsum(table["close"].to_pylist()),
    "volume": math.fsum(v or 0.0 for v in table["volume"].to_pylist()),
}
ok = exp["count"] == count and got == exp and t["final_records"] == count
print(f"== verify: table {got}, topic {exp}: {'OK' if ok else 'MISMATCH'}")
rate = count / t["seconds"]
after = (count - t["first_commit_records"]) / (t["seconds"] - t["first_commit_s"]) if t["seconds"] > t["first_commit_s"] else None
print(f"kafka connect + iceberg sink: {count} records in {t['seconds']:.2f} s, {rate:,.0f} records/s "
      f"(first commit after {t['first_commit_s']:.2f} s; {after or 0:,.0f} records/s from it on; "
      f"{t['snapshots']} snapshots, {t['data_files']} data files)")
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
json.dump({
    "machine": os.environ.get("BENCH_MACHINE"),
    "date": datetime.date.today().isoformat(),
    "count": count,
    "seconds": round(t["seconds"], 3),
    "records_per_s": round(rate),
    "first_commit_s": round(t["first_commit_s"], 3),
    "first_commit_records": t["first_commit_records"],
    "records_per_s_after_first_commit": round(after) if after else None,
    "snapshots": t["snapshots"],
    "data_files": t["data_files"],
    "verified": ok,
    "settings": {"tasks.max": int(tasks), "iceberg.control.commit.interval-ms": int(commit_ms), "heap": heap,
                 "topic_partitions": 4, "symbols": 100},
    "versions": {"kafka_connect": kc, "iceberg_kafka_connect": ice, "hadoop_client": hadoop, "kafka_broker": kafka,
                 "java": java},
}, open(out, "w"), indent=2)
open(out, "a").write("\n")
print(f"== written to {out}")
sys.exit(0 if ok else 1)
EOF
