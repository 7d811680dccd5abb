# Real services for tests and benchmarks, sourced by scripts/test.sh and scripts/bench.sh.
#
# Apache Kafka (KRaft mode, one node) is assembled once from Maven Central with scripts/kafka/pom.xml and kept
# in $TICKLAKE_CACHE (default ~/.cache/ticklake); it needs Java 17+ and Maven. moto and DuckDB live in a venv
# there too.

TICKLAKE_CACHE=${TICKLAKE_CACHE:-$HOME/.cache/ticklake}
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$(dirname "${BASH_SOURCE[0]}")/kafka/pom.xml")
KAFKA_LIBS=$TICKLAKE_CACHE/kafka-$KAFKA_VERSION/libs

# Copies the runtime jars of scripts/$2/pom.xml (what: $1) from Maven Central into $3, once; extra Maven
# options follow.
maven_jars() {
  local what=$1 pom=$2 dir=$3
  shift 3
  if [ -f "$dir/.complete" ]; then
    return 0
  fi
  echo "== fetching $what from Maven Central into $dir"
  rm -rf "$dir"
  mvn -q -B -f "$(dirname "${BASH_SOURCE[0]}")/$pom/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$dir" "$@"
  touch "$dir/.complete"
}

# The broker's jars and their runtime dependencies, into $KAFKA_LIBS (first run only, ~1 min).
ensure_kafka() { maven_jars "Apache Kafka $KAFKA_VERSION" kafka "$KAFKA_LIBS"; }

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

# Starts a single-node Apache Kafka broker (KRaft: broker and controller in one JVM) on 127.0.0.1 with its
# log in $1; sets KAFKA_PID and KAFKA_ADDR. A folder that already holds a stopped broker restarts it with
# its data and ports (tests restart the broker mid-stream that way). Settings a test broker needs: one
# replica for internal topics, no initial rebalance delay (groups form at once), short group session
# bounds so tests can use them, and no time-based retention or segment rolling: ticklake's message
# timestamps are event times, years old for the simulator's and the samples' data, and Kafka's 7-day
# default would delete such messages within minutes of the broker's start.
start_kafka() {
  local dir=$1 port cport cluster restart=
  if [ -f "$dir/server.properties" ] && [ -f "$dir/data/meta.properties" ]; then
    restart=1
    port=$(sed -n 's/^advertised.listeners=PLAINTEXT:\/\/127.0.0.1://p' "$dir/server.properties")
  else
    port=$(free_port)
    cport=$(free_port)
    rm -rf "$dir/data"
    mkdir -p "$dir/data"
    cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
auto.create.topics.enable=false
message.max.bytes=16777216
log.retention.ms=-1
log.roll.ms=9223372036854775807
PROPS
  fi
  local java=(java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kafka/log4j2.yaml"
    -cp "$KAFKA_LIBS/*")
  if [ -z "$restart" ]; then
    cluster=$("${java[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
    "${java[@]}" kafka.tools.StorageTool format -t "$cluster" -c "$dir/server.properties" >"$dir/format.log" 2>&1 || {
      cat "$dir/format.log" >&2
      return 1
    }
  fi
  : >"$dir/kafka.log"
  "${java[@]}" kafka.Kafka "$dir/server.properties" >>"$dir/kafka.log" 2>&1 &
  KAFKA_PID=$!
  KAFKA_ADDR=127.0.0.1:$port
  local i=0
  until grep -q 'Kafka Server started' "$dir/kafka.log" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -ge 1200 ] || ! kill -0 "$KAFKA_PID" 2>/dev/null; then
      echo "Apache Kafka did not start; its log:" >&2
      tail -50 "$dir/kafka.log" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "== Apache Kafka $KAFKA_VERSION (KRaft) listening on $KAFKA_ADDR (pid $KAFKA_PID, data in $dir)"
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

stop_kafka() { stop_service KAFKA_PID; }

# Python tools in their own venv in the cache: moto (an S3 and Glue API server; boto3 comes with it),
# DuckDB (the reference engine the query tests compare answers with), pyiceberg (an Iceberg reader
# nobody here wrote, for the Iceberg tables) and PySpark (a JVM engine reading both table formats).
MOTO_VENV=$TICKLAKE_CACHE/moto-venv
PYTHON_TOOLS=(moto[server] duckdb "pyiceberg[sql-sqlite,pyarrow]" pyspark==3.5.9)

ensure_moto() {
  if [ -x "$MOTO_VENV/bin/moto_server" ] && "$MOTO_VENV/bin/python" -c 'import duckdb, boto3, pyiceberg.catalog.sql, pyarrow, pyspark' 2>/dev/null; then
    return 0
  fi
  echo "== installing ${PYTHON_TOOLS[*]} into $MOTO_VENV"
  if [ ! -x "$MOTO_VENV/bin/pip" ]; then
    rm -rf "$MOTO_VENV"
    python3 -m venv "$MOTO_VENV"
  fi
  "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "${PYTHON_TOOLS[@]}"
}

# Schemathesis (the API's schema test: it generates requests from /api/openapi.json and checks the
# answers against it) in a venv of its own, so its pins do not meet moto's.
SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_VENV=$TICKLAKE_CACHE/schemathesis-$SCHEMATHESIS_VERSION
ensure_schemathesis() {
  if [ ! -x "$SCHEMATHESIS_VENV/bin/schemathesis" ]; then
    echo "== installing schemathesis $SCHEMATHESIS_VERSION into $SCHEMATHESIS_VENV"
    rm -rf "$SCHEMATHESIS_VENV"
    python3 -m venv "$SCHEMATHESIS_VENV"
    "$SCHEMATHESIS_VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
  fi
  export TICKLAKE_TEST_SCHEMATHESIS=$SCHEMATHESIS_VENV/bin/schemathesis
}

# The dashboard's browser test: playwright-core (scripts/browser/package-lock.json) from the npm registry
# into $BROWSER_TOOLS, and Debian's chromium (installed by .ci/run).
BROWSER_TOOLS=$TICKLAKE_CACHE/browser-$(sha256sum "$(dirname "${BASH_SOURCE[0]}")/browser/package-lock.json" | cut -c1-12)
ensure_browser() {
  if ! command -v chromium >/dev/null 2>&1; then
    echo "error: the dashboard's browser test needs Chromium: apt-get install chromium (.ci/run does)" >&2
    return 1
  fi
  if [ ! -f "$BROWSER_TOOLS/node_modules/playwright-core/package.json" ]; then
    echo "== installing playwright-core into $BROWSER_TOOLS"
    mkdir -p "$BROWSER_TOOLS"
    cp "$(dirname "${BASH_SOURCE[0]}")"/browser/package*.json "$BROWSER_TOOLS/"
    (cd "$BROWSER_TOOLS" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  export TICKLAKE_TEST_PLAYWRIGHT=$BROWSER_TOOLS/node_modules/playwright-core
  TICKLAKE_TEST_CHROMIUM=$(command -v chromium)
  export TICKLAKE_TEST_CHROMIUM
}

# The jars Spark needs for Iceberg tables (scripts/spark/pom.xml), from Maven Central into $SPARK_JARS.
SPARK_JARS=$TICKLAKE_CACHE/spark-jars-$(sed -n 's:.*<iceberg.version>\(.*\)</iceberg.version>.*:\1:p' "$(dirname "${BASH_SOURCE[0]}")/spark/pom.xml")
ensure_spark() { maven_jars "Apache Iceberg's Spark runtime" spark "$SPARK_JARS" -DexcludeTransitive=true; }

# Apache Iceberg's REST catalog server (scripts/iceberg-rest/pom.xml), from Maven Central into $ICEBERG_REST.
ICEBERG_REST=$TICKLAKE_CACHE/iceberg-rest-$(sed -n 's:.*<iceberg.version>\(.*\)</iceberg.version>.*:\1:p' "$(dirname "${BASH_SOURCE[0]}")/iceberg-rest/pom.xml")
ensure_iceberg_rest() { maven_jars "Apache Iceberg's REST catalog server" iceberg-rest "$ICEBERG_REST" -DexcludeTransitive=true; }

# Starts the Iceberg REST catalog server on 127.0.0.1, its JDBC catalog in a SQLite file in $1 and its
# default warehouse there too (ticklake gives each table its own location); sets ICEBERG_REST_PID and
# ICEBERG_REST_URL.
start_iceberg_rest() {
  local dir=$1 port
  port=$(free_port)
  mkdir -p "$dir/warehouse"
  CATALOG_REST_PORT=$port CATALOG_WAREHOUSE="file://$dir/warehouse" \
    CATALOG_URI="jdbc:sqlite:$dir/catalog.db" CATALOG_JDBC_USER=user CATALOG_JDBC_PASSWORD=password \
    java -Xmx512m -jar "$ICEBERG_REST"/iceberg-open-api-*.jar >"$dir/rest.log" 2>&1 &
  ICEBERG_REST_PID=$!
  ICEBERG_REST_URL=http://127.0.0.1:$port
  await_service "Iceberg REST catalog" "$port" "$dir/rest.log"
  echo "== Iceberg REST catalog listening on $ICEBERG_REST_URL (pid $ICEBERG_REST_PID)"
}

stop_iceberg_rest() { stop_service ICEBERG_REST_PID; }

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

# The machine, for benchmark reports: cores, CPU model, RAM, disk size.
bench_machine() {
  echo "$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/{print $2}') GiB, disk $(df -h . | awk 'NR==2{print $2}')"
}
