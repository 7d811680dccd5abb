#!/usr/bin/env bash
# The whole test suite, with the real services it needs: builds (once) and starts a tansu Kafka-protocol
# broker on 127.0.0.1, runs fmt, clippy and every test, and stops the broker again.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TICKLAKE_CACHE/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

ensure_tansu
work=$(mktemp -d "${TMPDIR:-/tmp}/ticklake-test.XXXXXX")
cleanup() {
  stop_tansu
  rm -rf "$work"
}
trap cleanup EXIT
start_tansu "$work/tansu"
export TICKLAKE_TEST_KAFKA=$TANSU_ADDR

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
