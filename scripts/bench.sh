#!/usr/bin/env bash
# Reproduces the numbers in BENCHMARKS.md: criterion micro-benchmarks (CSV parse, simulator, JSON codec)
# and end-to-end produce runs of the release binary into the embedded log and into a real tansu broker.
#
#   scripts/bench.sh              everything
#   scripts/bench.sh --quick      skip criterion
#   scripts/bench.sh --sink-only  only the sink runs
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TICKLAKE_CACHE/target}
COUNT=${BENCH_COUNT:-1000000}
SYMBOLS=${BENCH_SYMBOLS:-100}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
MODE=${1:-}
if [ -z "$MODE" ]; then
  cargo bench -p ticklake-model -p ticklake-feed --locked --benches 2>&1 \
    | grep -E '^(codec|feed)/|thrpt:' | sed 's/^ *//'
fi

cargo build --release --locked -p ticklake-cli --quiet
bin=$CARGO_TARGET_DIR/release/ticklake
work=$(mktemp -d "${TMPDIR:-/tmp}/ticklake-bench.XXXXXX")
cleanup() { stop_tansu; stop_moto; rm -rf "$work"; }
trap cleanup EXIT

if [ "$MODE" != "--sink-only" ]; then
echo "== produce to the embedded log: $COUNT simulated records, $SYMBOLS symbols"
(cd "$work" && "$bin" -q produce --simulate --symbols "$SYMBOLS" --count "$COUNT") | tail -1
echo "== produce to the embedded log: the HSI sample, looped to $COUNT records"
(cd "$work" && "$bin" -q --topic csv produce --source "$OLDPWD/data/indexProcessed-HSI.csv" --loop --count "$COUNT") | tail -1
echo "== read back from the embedded log"
start=$(date +%s.%N)
n=$(cd "$work" && "$bin" -q consume --values | wc -l)
end=$(date +%s.%N)
python3 -c "print(f'{$n} records read in {$end-$start:.2f}s, {$n/($end-$start):.0f} records/s')"

ensure_tansu
start_tansu "$work/tansu" >/dev/null
echo "== produce to tansu $TANSU_VERSION (SQLite engine): $COUNT simulated records, lz4, idempotent"
"$bin" -q --brokers "$TANSU_ADDR" produce --simulate --symbols "$SYMBOLS" --count "$COUNT" | tail -1
echo "== the same with zstd"
"$bin" -q --brokers "$TANSU_ADDR" --topic zstd -X compression.type=zstd produce --simulate --symbols "$SYMBOLS" --count "$COUNT" | tail -1

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
