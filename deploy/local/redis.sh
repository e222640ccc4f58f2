# shellcheck shell=bash
# Redis server on loopback with append-only persistence. Sourced by services.sh (needs lib.sh).
# Config, data, log and pid file live in $RUN_DIR/redis.

REDIS_PORT=${LOOPWISE_REDIS_PORT:-6390}
REDIS_LOCAL_URL="redis://127.0.0.1:$REDIS_PORT/0"

redis_init() {
  REDIS_DIR="$RUN_DIR/redis"
  REDIS_PID="$REDIS_DIR/redis.pid"
  REDIS_LOGS=("$REDIS_DIR/redis.log" "$REDIS_DIR/stdout.log")
}

redis_addr() { echo "${REDIS_URL:-$REDIS_LOCAL_URL}"; }

# External when REDIS_URL names anything but the server we manage.
redis_external() {
  local given=${REDIS_URL:-}
  [[ -n $given && ${given/localhost:/127.0.0.1:} != "$REDIS_LOCAL_URL" ]]
}

# Redis rewrites its process title, so match the name plus its working directory (= data dir).
redis_pid() { pid_of "$REDIS_PID" redis-server "$REDIS_DIR/data"; }

# "Up" means PING answers PONG.
redis_ready() {
  if command -v redis-cli >/dev/null; then
    [[ $(timeout 5 redis-cli -u "$1" ping 2>/dev/null) == PONG ]]
  elif venv_has redis; then
    "$LW_PYTHON" -c 'import sys, redis; redis.Redis.from_url(sys.argv[1], socket_timeout=3).ping()' "$1"
  else
    local hp=${1#*://}
    hp=${hp##*@}
    hp=${hp%%/*}
    port_open "${hp%:*}" "${hp##*:}"
  fi
}

redis_write_config() {
  mkdir -p "$REDIS_DIR/data"
  cat >"$REDIS_DIR/redis.conf" <<EOF
# Written by deploy/local/redis.sh on every start; edits are overwritten.
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize no
dir "$REDIS_DIR/data"
logfile "$REDIS_DIR/redis.log"
appendonly yes
appendfsync everysec
EOF
}

redis_up() {
  local pid t0 rc
  if redis_external; then
    redis_ready "$REDIS_URL" || die redis "REDIS_URL=$(redact "$REDIS_URL") is set but no Redis answers PING there"
    say redis "external at $(redact "$REDIS_URL") (reachable); not starting one"
    return 0
  fi
  if pid=$(redis_pid); then
    wait_until 20 "$pid" redis_ready "$REDIS_LOCAL_URL" || {
      show_logs "${REDIS_LOGS[@]}"
      die redis "already running (pid $pid) but not answering PING on 127.0.0.1:$REDIS_PORT"
    }
    say redis "already running on 127.0.0.1:$REDIS_PORT (pid $pid)"
    return 0
  fi
  clear_stale_pid redis "$REDIS_PID"
  require_free_port redis "$REDIS_PORT" LOOPWISE_REDIS_PORT
  if ! command -v redis-server >/dev/null; then
    apt_install redis redis-server
    command -v redis-server >/dev/null || die redis "redis-server still missing after apt-get install redis-server"
  fi
  redis_write_config
  say redis "starting on 127.0.0.1:$REDIS_PORT (data $REDIS_DIR/data)…"
  mark_logs "${REDIS_LOGS[@]}"
  t0=$(now_us)
  setsid nohup redis-server "$REDIS_DIR/redis.conf" >>"$REDIS_DIR/stdout.log" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$REDIS_PID"
  rc=0
  wait_until "${LOOPWISE_REDIS_START_TIMEOUT:-30}" "$pid" redis_ready "$REDIS_LOCAL_URL" || rc=$?
  if ((rc != 0)); then
    show_logs "${REDIS_LOGS[@]}"
    ((rc == 2)) || stop_pid redis "$pid" 10
    rm -f "$REDIS_PID"
    die redis "failed to start on 127.0.0.1:$REDIS_PORT (full log $REDIS_DIR/redis.log)"
  fi
  say redis "up on 127.0.0.1:$REDIS_PORT (pid $pid, $(since "$t0"))"
}

redis_down() {
  local pid
  if redis_external; then
    say redis "external at $(redact "$REDIS_URL"); left alone"
  elif pid=$(redis_pid); then
    # SIGTERM makes Redis flush the append-only file before exiting, so data survives.
    stop_pid redis "$pid" 20
    rm -f "$REDIS_PID"
  else
    clear_stale_pid redis "$REDIS_PID"
    say redis "not running"
  fi
}

redis_status() {
  local pid
  if redis_external; then
    if redis_ready "$REDIS_URL"; then
      status_line redis external "$REDIS_URL" reachable
    else
      status_line redis external "$REDIS_URL" UNREACHABLE
      return 1
    fi
  elif pid=$(redis_pid); then
    if redis_ready "$REDIS_LOCAL_URL"; then
      status_line redis running "$REDIS_LOCAL_URL" "pid $pid"
    else
      status_line redis starting "$REDIS_LOCAL_URL" "pid $pid, not answering PING"
      return 1
    fi
  else
    status_line redis stopped "$REDIS_LOCAL_URL" ""
    return 1
  fi
}
