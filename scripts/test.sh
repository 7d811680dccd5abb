#!/usr/bin/env bash
# The whole test suite, with the real services it needs: fetches (once) and starts an Apache Kafka broker
# (KRaft), a moto S3/Glue server and Apache Iceberg's REST catalog server on 127.0.0.1 (and DuckDB, pyiceberg and Spark, the references for
# query answers, playwright-core for the dashboard in Chromium, and schemathesis for the API), runs fmt,
# clippy and every test, and stops them again.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TICKLAKE_CACHE/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

ensure_kafka
ensure_moto
ensure_spark
ensure_iceberg_rest
ensure_browser
ensure_schemathesis
work=$(mktemp -d "${TMPDIR:-/tmp}/ticklake-test.XXXXXX")
cleanup() {
  stop_kafka
  stop_moto
  stop_iceberg_rest
  rm -rf "$work"
}
trap cleanup EXIT
start_kafka "$work/kafka"
start_moto "$work/moto"
start_iceberg_rest "$work/iceberg-rest"
export TICKLAKE_TEST_KAFKA=$KAFKA_ADDR
export TICKLAKE_TEST_S3=$MOTO_URL
export TICKLAKE_TEST_PYTHON=$MOTO_VENV/bin/python
export TICKLAKE_TEST_SPARK_JARS=$SPARK_JARS
export TICKLAKE_TEST_ICEBERG_REST=$ICEBERG_REST_URL

# The shared target dir grows with every build. Its incremental state alone reached 12 GiB and filled
# the disk: beyond 8 GiB it is deleted (cargo rebuilds what it needs from it).
incremental="$CARGO_TARGET_DIR/debug/incremental"
if [ -d "$incremental" ] && [ "$(du -s --block-size=1G "$incremental" | cut -f1)" -gt 8 ]; then
  echo "== removing $incremental (over 8 GiB)"
  rm -rf "$incremental"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
