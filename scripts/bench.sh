#!/usr/bin/env bash
# Reproduces the numbers in BENCHMARKS.md: criterion micro-benchmarks (CSV parse, simulator, JSON codec)
# and end-to-end produce runs of the release binary into the embedded log and into a real tansu broker.
#
#   scripts/bench.sh            everything
#   scripts/bench.sh --quick    skip criterion, only the produce runs
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TICKLAKE_CACHE/target}
COUNT=${BENCH_COUNT:-1000000}
SYMBOLS=${BENCH_SYMBOLS:-100}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB"
if [ "${1:-}" != "--quick" ]; then
  cargo bench -p ticklake-model -p ticklake-feed --locked --benches 2>&1 \
    | grep -E '^(codec|feed)/|thrpt:' | sed 's/^ *//'
fi

cargo build --release --locked -p ticklake-cli --quiet
bin=$CARGO_TARGET_DIR/release/ticklake
work=$(mktemp -d "${TMPDIR:-/tmp}/ticklake-bench.XXXXXX")
cleanup() { stop_tansu; rm -rf "$work"; }
trap cleanup EXIT

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
