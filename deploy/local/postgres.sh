# shellcheck shell=bash
# PostgreSQL on loopback with database/role "loopwise", plus deploy/migrations applied.
# Sourced by services.sh (needs lib.sh). Cluster, socket and log live in $RUN_DIR/postgres.
# PostgreSQL refuses to run as root, so as root the cluster belongs to a system user.

PG_PORT=${LOOPWISE_PG_PORT:-5440}
PG_LOCAL_URL="postgresql://loopwise:loopwise@127.0.0.1:$PG_PORT/loopwise"
PG_OS_USER=${LOOPWISE_PG_OS_USER:-loopwise-pg}

postgres_init() {
  PG_DIR="$RUN_DIR/postgres"
  PG_DATA="$PG_DIR/data"
  PG_SOCK="$PG_DIR/socket"
  PG_LOG="$PG_DIR/postgres.log"
  PG_BIN=
}

postgres_addr() { echo "${DATABASE_URL:-$PG_LOCAL_URL}"; }

# External when DATABASE_URL names anything but the database we manage.
postgres_external() {
  local given=${DATABASE_URL:-}
  given=${given/#postgres:\/\//postgresql://}
  [[ -n $given && ${given/@localhost:/@127.0.0.1:} != "$PG_LOCAL_URL" ]]
}

postgres_pid() { pid_of "$PG_DATA/postmaster.pid" postgres "$PG_DATA"; }

# Runs a command as the cluster's owner (from a directory that user can enter).
pg_as_owner() {
  if [[ $EUID -eq 0 ]]; then
    (cd "$PG_DIR" && runuser -u "$PG_OS_USER" -- "$@")
  else
    "$@"
  fi
}

pg_admin() {
  "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres "$@"
}

pg_local_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 3; }

pg_url_ready() { PGCONNECT_TIMEOUT=5 psql -X -tAq -d "$1" -c 'select 1' >/dev/null 2>&1; }

# Sets PG_BIN: the server binaries matching an existing cluster, else the newest installed.
postgres_find_bin() {
  local want='' d
  [[ -f $PG_DATA/PG_VERSION ]] && want=$(<"$PG_DATA/PG_VERSION")
  if [[ -n ${LOOPWISE_PG_BIN:-} ]]; then
    PG_BIN=$LOOPWISE_PG_BIN
  elif [[ -n $want && -x /usr/lib/postgresql/$want/bin/postgres ]]; then
    PG_BIN=/usr/lib/postgresql/$want/bin
  else
    PG_BIN=
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V); do
      [[ -x $d/initdb && -x $d/postgres && -x $d/pg_ctl ]] && PG_BIN=$d
    done
  fi
  [[ -n $PG_BIN ]] || return 1
  if [[ -n $want && $("$PG_BIN/postgres" -V 2>/dev/null) != *" $want."* ]]; then
    die postgres "$PG_DATA was made by PostgreSQL $want, which is not installed (found $PG_BIN); install postgresql-$want or delete $PG_DIR"
  fi
}

postgres_ensure_bin() {
  postgres_find_bin && return 0
  apt_install postgres postgresql
  postgres_find_bin || die postgres "no initdb/postgres under /usr/lib/postgresql/*/bin after apt-get install postgresql"
}

# As root: a system user owns $PG_DIR, and every directory above it must let that user through.
postgres_prepare_dir() {
  local d='' part parts=()
  mkdir -p "$PG_DIR"
  chmod 700 "$PG_DIR"
  [[ $EUID -eq 0 ]] || return 0
  if ! id -u "$PG_OS_USER" >/dev/null 2>&1; then
    say postgres "creating system user $PG_OS_USER (PostgreSQL refuses to run as root)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$PG_OS_USER"
  fi
  [[ $(stat -c %U "$PG_DIR") == "$PG_OS_USER" ]] || chown -R "$PG_OS_USER:" "$PG_DIR"
  runuser -u "$PG_OS_USER" -- test -x "$PG_DIR" && return 0
  IFS=/ read -ra parts <<<"${PG_DIR#/}"
  for part in "${parts[@]}"; do
    d="$d/$part"
    if ! runuser -u "$PG_OS_USER" -- test -x "$d"; then
      say postgres "chmod o+x $d so that $PG_OS_USER can reach $PG_DIR"
      chmod o+x "$d"
    fi
  done
}

postgres_initdb() {
  [[ -f $PG_DATA/PG_VERSION ]] && return 0
  rm -rf "$PG_DATA" # leftovers of an interrupted initdb
  say postgres "creating a cluster in $PG_DATA ($("$PG_BIN/postgres" -V))"
  if ! pg_as_owner "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust --encoding=UTF8 \
    --no-locale >"$PG_DIR/initdb.log" 2>&1; then
    show_logs "$PG_DIR/initdb.log"
    die postgres "initdb failed (log $PG_DIR/initdb.log)"
  fi
}

# Settings of ours go to loopwise.conf, included last by postgresql.conf; rewritten each start.
postgres_write_config() {
  local sock=$PG_SOCK
  if ((${#sock} > 100)); then
    warn postgres "socket path $sock is too long for a Unix socket; TCP only"
    sock=
  else
    mkdir -p "$sock"
  fi
  cat >"$PG_DATA/loopwise.conf" <<EOF
# Written by deploy/local/postgres.sh on every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$sock'
EOF
  grep -qx "include_if_exists = 'loopwise.conf'" "$PG_DATA/postgresql.conf" ||
    echo "include_if_exists = 'loopwise.conf'" >>"$PG_DATA/postgresql.conf"
  [[ $EUID -ne 0 ]] || chown "$PG_OS_USER:" "$PG_DATA/loopwise.conf" ${sock:+"$sock"}
}

# Role and database "loopwise" (password "loopwise"; CREATEDB lets tests make scratch databases).
postgres_ensure_db() {
  if [[ $(pg_admin -tA -c "select 1 from pg_roles where rolname = 'loopwise'") != 1 ]]; then
    say postgres "creating role loopwise"
    pg_admin -c "create role loopwise login createdb password 'loopwise'"
  fi
  if [[ $(pg_admin -tA -c "select 1 from pg_database where datname = 'loopwise'") != 1 ]]; then
    say postgres "creating database loopwise"
    pg_admin -c "create database loopwise owner loopwise"
  fi
}

postgres_migrate() {
  bash "$LW_LOCAL/migrate.sh" "$1" || die postgres "migrations failed on $(redact "$1") (see above)"
}

postgres_up() {
  local pid t0
  if postgres_external; then
    ensure_psql postgres
    pg_url_ready "$DATABASE_URL" || die postgres "DATABASE_URL=$(redact "$DATABASE_URL") is set but that database does not answer"
    say postgres "external at $(redact "$DATABASE_URL") (reachable); not starting one"
    postgres_migrate "$DATABASE_URL"
    return 0
  fi
  postgres_ensure_bin
  if pid=$(postgres_pid); then
    wait_until 30 "$pid" pg_local_ready || {
      show_logs "$PG_LOG"
      die postgres "already running (pid $pid) but not accepting connections on 127.0.0.1:$PG_PORT"
    }
    say postgres "already running on 127.0.0.1:$PG_PORT (pid $pid)"
  else
    clear_stale_pid postgres "$PG_DATA/postmaster.pid"
    require_free_port postgres "$PG_PORT" LOOPWISE_PG_PORT
    postgres_prepare_dir
    postgres_initdb
    postgres_write_config
    say postgres "starting on 127.0.0.1:$PG_PORT (data $PG_DATA)…"
    mark_logs "$PG_LOG"
    t0=$(now_us)
    if ! pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start \
      >"$PG_DIR/pg_ctl.log" 2>&1 9>&-; then
      show_logs "$PG_LOG" "$PG_DIR/pg_ctl.log"
      die postgres "failed to start on 127.0.0.1:$PG_PORT (full log $PG_LOG)"
    fi
    pid=$(postgres_pid) || die postgres "pg_ctl reported a start, but no postmaster runs from $PG_DATA"
    say postgres "up on 127.0.0.1:$PG_PORT (pid $pid, $(since "$t0"))"
  fi
  postgres_ensure_db
  postgres_migrate "$PG_LOCAL_URL"
}

postgres_down() {
  local pid t0
  if postgres_external; then
    say postgres "external at $(redact "$DATABASE_URL"); left alone"
  elif pid=$(postgres_pid); then
    t0=$(now_us)
    if postgres_find_bin && pg_as_owner "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop \
      >"$PG_DIR/pg_ctl.log" 2>&1 9>&-; then
      say postgres "stopped (pid $pid, $(since "$t0"))"
    else
      warn postgres "pg_ctl stop failed; signalling pid $pid"
      kill -INT "$pid" 2>/dev/null || true # SIGINT = fast shutdown
      stop_pid postgres "$pid" 30
    fi
  else
    clear_stale_pid postgres "$PG_DATA/postmaster.pid"
    say postgres "not running"
  fi
}

postgres_status() {
  local pid
  if postgres_external; then
    if command -v psql >/dev/null && pg_url_ready "$DATABASE_URL"; then
      status_line postgres external "$DATABASE_URL" reachable
    else
      status_line postgres external "$DATABASE_URL" UNREACHABLE
      return 1
    fi
  elif pid=$(postgres_pid); then
    if postgres_find_bin && pg_local_ready; then
      status_line postgres running "$PG_LOCAL_URL" "pid $pid"
    else
      status_line postgres starting "$PG_LOCAL_URL" "pid $pid, not accepting connections"
      return 1
    fi
  else
    status_line postgres stopped "$PG_LOCAL_URL" ""
    return 1
  fi
}
