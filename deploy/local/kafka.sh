# shellcheck shell=bash
# Single-node KRaft Apache Kafka broker on loopback. Sourced by services.sh (needs lib.sh).
# Jars come from Maven Central via kafka-pom.xml into a cache outside git; data, config,
# logs and the pid file live in $RUN_DIR/kafka.

KAFKA_PORT=${LOOPWISE_KAFKA_PORT:-9092}
KAFKA_CPORT=${LOOPWISE_KAFKA_CONTROLLER_PORT:-9093}
KAFKA_LOCAL_ADDR="127.0.0.1:$KAFKA_PORT"

kafka_init() {
  KAFKA_DIR="$RUN_DIR/kafka"
  KAFKA_PID="$KAFKA_DIR/kafka.pid"
  KAFKA_LOGS=("$KAFKA_DIR/server.log" "$KAFKA_DIR/stdout.log")
}

kafka_addr() { echo "${KAFKA_BOOTSTRAP_SERVERS:-$KAFKA_LOCAL_ADDR}"; }

# External when KAFKA_BOOTSTRAP_SERVERS names anything but the broker we manage (the Makefile
# exports our own services.env to tests, which must still see our broker as ours).
kafka_external() {
  local given=${KAFKA_BOOTSTRAP_SERVERS:-}
  [[ -n $given && ${given/localhost:/127.0.0.1:} != "$KAFKA_LOCAL_ADDR" ]]
}

kafka_pid() { pid_of "$KAFKA_PID" "kafka.Kafka $KAFKA_DIR/server.properties"; }

# "Up" means a metadata request succeeds (TCP connect only when the venv lacks confluent_kafka).
kafka_ready() {
  local hp
  hp=$(first_hostport "$1")
  port_open "${hp%:*}" "${hp##*:}" || return 1
  venv_has confluent_kafka || return 0
  "$LW_PYTHON" - "$1" <<'PY'
import sys

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

try:
    md = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0}).list_topics(timeout=5)
except KafkaException:
    sys.exit(1)
sys.exit(0 if md.brokers else 1)
PY
}

kafka_version() {
  sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$LW_LOCAL/kafka-pom.xml" | head -n 1
}

# Sets KAFKA_LIBS, downloading the jars unless the cache holds a complete copy for this pom.
kafka_fetch_jars() {
  local ver=$1 home pom_sum t0
  home="$CACHE_DIR/kafka-$ver"
  KAFKA_LIBS="$home/libs"
  pom_sum=$(sha256sum "$LW_LOCAL/kafka-pom.xml" | cut -d' ' -f1)
  if [[ -d $KAFKA_LIBS && -f $home/.complete && $(<"$home/.complete") == "$pom_sum" ]]; then
    return 0
  fi
  command -v mvn >/dev/null || die kafka "Maven (mvn) is needed to fetch the Kafka $ver jars; install it (apt-get install maven) and retry"
  say kafka "fetching $ver jars with Maven (first run only)…"
  t0=$(now_us)
  mkdir -p "$home"
  rm -rf "$KAFKA_LIBS" "$home/libs.partial" "$home/.complete"
  if ! mvn -q -B -f "$LW_LOCAL/kafka-pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$home/libs.partial" -DincludeScope=runtime >"$home/mvn.log" 2>&1; then
    show_logs "$home/mvn.log"
    die kafka "Maven could not fetch the Kafka $ver jars (log $home/mvn.log); the next run retries"
  fi
  [[ -f $home/libs.partial/kafka_2.13-$ver.jar ]] || die kafka "Maven finished but kafka_2.13-$ver.jar is missing from $home/libs.partial"
  mv "$home/libs.partial" "$KAFKA_LIBS"
  echo "$pom_sum" >"$home/.complete"
  say kafka "fetched $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars into $KAFKA_LIBS ($(since "$t0"))"
}

kafka_require_java() {
  local major
  command -v java >/dev/null || die kafka "Java 17+ is needed; install it (apt-get install openjdk-17-jre-headless) and retry"
  major=$(java -version 2>&1 | sed -nE '1s/.*version "([0-9]+).*/\1/p')
  [[ -z $major ]] || ((major >= 17)) || die kafka "Kafka needs Java 17+, but 'java' is version $major"
}

kafka_write_config() {
  mkdir -p "$KAFKA_DIR/data"
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by deploy/local/kafka.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CPORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
EOF
  cat >"$KAFKA_DIR/log4j2.properties" <<EOF
status = warn
shutdownHook = disable
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = $KAFKA_DIR/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
EOF
}

kafka_java() {
  java -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -cp "$KAFKA_LIBS/*" "$@"
}

# Formats the KRaft storage once; the cluster id is kept in $KAFKA_DIR/cluster.id.
kafka_format() {
  local id
  [[ -f $KAFKA_DIR/data/meta.properties ]] && return 0
  if [[ ! -s $KAFKA_DIR/cluster.id ]]; then
    id=$(kafka_java kafka.tools.StorageTool random-uuid 2>>"$KAFKA_DIR/format.log" | tail -n 1)
    [[ $id =~ ^[A-Za-z0-9_-]{22}$ ]] || die kafka "StorageTool random-uuid printed '$id', not a cluster id"
    echo "$id" >"$KAFKA_DIR/cluster.id"
  fi
  id=$(<"$KAFKA_DIR/cluster.id")
  say kafka "formatting storage in $KAFKA_DIR/data (cluster id $id)"
  if ! kafka_java kafka.tools.StorageTool format -t "$id" -c "$KAFKA_DIR/server.properties" \
    >>"$KAFKA_DIR/format.log" 2>&1; then
    show_logs "$KAFKA_DIR/format.log"
    die kafka "formatting the storage failed (log $KAFKA_DIR/format.log)"
  fi
}

kafka_up() {
  local pid ver t0 rc heap=()
  if kafka_external; then
    kafka_ready "$KAFKA_BOOTSTRAP_SERVERS" ||
      die kafka "KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS is set but no broker answers there"
    say kafka "external at $KAFKA_BOOTSTRAP_SERVERS (reachable); not starting one"
    return 0
  fi
  if pid=$(kafka_pid); then
    wait_until 60 "$pid" kafka_ready "$KAFKA_LOCAL_ADDR" || {
      show_logs "${KAFKA_LOGS[@]}"
      die kafka "already running (pid $pid) but not answering on $KAFKA_LOCAL_ADDR"
    }
    say kafka "already running on $KAFKA_LOCAL_ADDR (pid $pid)"
    return 0
  fi
  clear_stale_pid kafka "$KAFKA_PID"
  require_free_port kafka "$KAFKA_PORT" LOOPWISE_KAFKA_PORT
  require_free_port kafka "$KAFKA_CPORT" LOOPWISE_KAFKA_CONTROLLER_PORT
  kafka_require_java
  ver=$(kafka_version)
  [[ -n $ver ]] || die kafka "no <kafka.version> in $LW_LOCAL/kafka-pom.xml"
  kafka_fetch_jars "$ver"
  kafka_write_config
  kafka_format
  read -ra heap <<<"${LOOPWISE_KAFKA_HEAP:--Xms256m -Xmx512m}"
  say kafka "starting Kafka $ver on $KAFKA_LOCAL_ADDR (controller 127.0.0.1:$KAFKA_CPORT, logs $KAFKA_DIR)…"
  mark_logs "${KAFKA_LOGS[@]}"
  t0=$(now_us)
  setsid nohup java "${heap[@]}" -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -cp "$KAFKA_LIBS/*" \
    kafka.Kafka "$KAFKA_DIR/server.properties" >>"$KAFKA_DIR/stdout.log" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$KAFKA_PID"
  rc=0
  wait_until "${LOOPWISE_KAFKA_START_TIMEOUT:-90}" "$pid" kafka_ready "$KAFKA_LOCAL_ADDR" || rc=$?
  if ((rc == 2)); then
    rm -f "$KAFKA_PID"
    show_logs "${KAFKA_LOGS[@]}"
    die kafka "the broker exited during start-up (logs above, full log $KAFKA_DIR/server.log)"
  elif ((rc != 0)); then
    show_logs "${KAFKA_LOGS[@]}"
    stop_pid kafka "$pid" 20
    rm -f "$KAFKA_PID"
    die kafka "no answer on $KAFKA_LOCAL_ADDR within ${LOOPWISE_KAFKA_START_TIMEOUT:-90}s; stopped it (full log $KAFKA_DIR/server.log)"
  fi
  say kafka "up on $KAFKA_LOCAL_ADDR (pid $pid, $(since "$t0"))"
}

kafka_down() {
  local pid
  if kafka_external; then
    say kafka "external at $KAFKA_BOOTSTRAP_SERVERS; left alone"
  elif pid=$(kafka_pid); then
    stop_pid kafka "$pid" "${LOOPWISE_KAFKA_STOP_TIMEOUT:-20}"
    rm -f "$KAFKA_PID"
  else
    clear_stale_pid kafka "$KAFKA_PID"
    say kafka "not running"
  fi
}

kafka_status() {
  local pid
  if kafka_external; then
    if kafka_ready "$KAFKA_BOOTSTRAP_SERVERS"; then
      status_line kafka external "$KAFKA_BOOTSTRAP_SERVERS" reachable
    else
      status_line kafka external "$KAFKA_BOOTSTRAP_SERVERS" UNREACHABLE
      return 1
    fi
  elif pid=$(kafka_pid); then
    if kafka_ready "$KAFKA_LOCAL_ADDR"; then
      status_line kafka running "$KAFKA_LOCAL_ADDR" "pid $pid"
    else
      status_line kafka starting "$KAFKA_LOCAL_ADDR" "pid $pid, not answering yet"
      return 1
    fi
  else
    status_line kafka stopped "$KAFKA_LOCAL_ADDR" ""
    return 1
  fi
}
