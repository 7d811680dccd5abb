# Real services for tests and benchmarks, sourced by scripts/test.sh and scripts/bench.sh.
#
# tansu (a Kafka-protocol broker, from crates.io) is built once with its durable SQLite engine and kept in
# $TICKLAKE_CACHE (default ~/.cache/ticklake), so later runs skip the ~20 minute build.

TICKLAKE_CACHE=${TICKLAKE_CACHE:-$HOME/.cache/ticklake}
TANSU_VERSION=0.6.0
TANSU_ROOT=$TICKLAKE_CACHE/tansu-$TANSU_VERSION
TANSU_BIN=$TANSU_ROOT/bin/tansu

ensure_tansu() {
  if [ -x "$TANSU_BIN" ]; then
    return 0
  fi
  echo "== building tansu $TANSU_VERSION (first run only, ~20 min on 2 cores) into $TANSU_ROOT"
  mkdir -p "$TANSU_ROOT"
  CARGO_TARGET_DIR=$TICKLAKE_CACHE/tansu-build \
    cargo install tansu --version "$TANSU_VERSION" --locked --features libsql --root "$TANSU_ROOT" --quiet
  rm -rf "$TICKLAKE_CACHE/tansu-build"
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Waits until 127.0.0.1:$1 accepts connections (up to $2 seconds).
wait_port() {
  local port=$1 limit=${2:-30} i=0
  until python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(('127.0.0.1', $port)))" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -ge $((limit * 10)) ]; then
      return 1
    fi
    sleep 0.1
  done
}

# Waits for a service started in the background to accept connections on $2, or shows its log $3.
await_service() {
  local name=$1 port=$2 log=$3
  if ! wait_port "$port" 60; then
    echo "$name did not start; its log:" >&2
    cat "$log" >&2
    return 1
  fi
}

# Starts tansu on 127.0.0.1 with SQLite storage in $1; sets TANSU_PID and TANSU_ADDR.
start_tansu() {
  local dir=$1 port
  port=$(free_port)
  mkdir -p "$dir"
  (cd "$dir" && exec "$TANSU_BIN" broker \
      --storage-engine "sqlite://tansu.db" \
      --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" \
      >"$dir/tansu.log" 2>&1) &
  TANSU_PID=$!
  TANSU_ADDR=127.0.0.1:$port
  await_service tansu "$port" "$dir/tansu.log"
  echo "== tansu $TANSU_VERSION listening on $TANSU_ADDR (pid $TANSU_PID, data in $dir)"
}

# Stops the background service whose pid is in the variable named $1, and clears it.
stop_service() {
  local pid=${!1:-}
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  printf -v "$1" '%s' ''
}

stop_tansu() { stop_service TANSU_PID; }

# Python tools in their own venv in the cache: moto (an S3 and Glue API server; boto3 comes with it) and
# DuckDB (the reference engine the query tests compare answers with).
MOTO_VENV=$TICKLAKE_CACHE/moto-venv
PYTHON_TOOLS=(moto[server] duckdb)

ensure_moto() {
  if [ -x "$MOTO_VENV/bin/moto_server" ] && "$MOTO_VENV/bin/python" -c 'import duckdb, boto3' 2>/dev/null; then
    return 0
  fi
  echo "== installing ${PYTHON_TOOLS[*]} into $MOTO_VENV"
  if [ ! -x "$MOTO_VENV/bin/pip" ]; then
    rm -rf "$MOTO_VENV"
    python3 -m venv "$MOTO_VENV"
  fi
  "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "${PYTHON_TOOLS[@]}"
}

# Starts moto on 127.0.0.1; sets MOTO_PID and MOTO_URL.
start_moto() {
  local dir=$1 port
  port=$(free_port)
  mkdir -p "$dir"
  "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
  MOTO_PID=$!
  MOTO_URL=http://127.0.0.1:$port
  await_service moto "$port" "$dir/moto.log"
  echo "== moto listening on $MOTO_URL (pid $MOTO_PID)"
}

stop_moto() { stop_service MOTO_PID; }
