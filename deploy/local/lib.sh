# shellcheck shell=bash
# Helpers shared by deploy/local/*.sh: paths, logging, pid files, port checks, waits, apt.
# Sourced, never run. Callers use `set -euo pipefail`; `die` ends the whole run.

LW_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck disable=SC2034 # LW_LOCAL and CACHE_DIR are used by the service scripts
LW_LOCAL="$LW_ROOT/deploy/local"
RUN_DIR=${LOOPWISE_RUN_DIR:-$LW_ROOT/.run}
# shellcheck disable=SC2034
CACHE_DIR=${LOOPWISE_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/loopwise}
# The project's venv: used for Kafka/Redis health checks when it has the client libraries.
LW_PYTHON=${LOOPWISE_PYTHON:-$LW_ROOT/.venv/bin/python}

say() { printf '%s: %s\n' "$1" "$2"; }
warn() { printf '%s: warning: %s\n' "$1" "$2" >&2; }
die() {
  printf '%s: ERROR: %s\n' "$1" "$2" >&2
  exit 1
}

# One line of `services.sh status`: service, state, address, details.
status_line() {
  local line
  line=$(printf '%-9s %-9s %-52s %s' "$1" "$2" "$(redact "$3")" "$4")
  echo "${line%"${line##*[! ]}"}"
}

# Makes RUN_DIR absolute and present.
run_dir_init() {
  mkdir -p "$RUN_DIR"
  RUN_DIR=$(cd "$RUN_DIR" && pwd)
}

# Hides the password of a URL for printing.
redact() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

# Microsecond clock and "2.8 s" formatting.
now_us() { echo "${EPOCHREALTIME/[.,]/}"; }
since() {
  local ms=$((($(now_us) - $1) / 1000))
  printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100))
}

# --- processes and pid files -------------------------------------------------------------

# True while PID exists and is not a zombie (PID 1 of a container may not reap orphans).
proc_alive() {
  local state
  [[ -r /proc/$1/stat ]] || return 1
  state=$(sed -E 's/^.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z && $state != X ]]
}

proc_gone() { ! proc_alive "$1"; }

# pid_of FILE PATTERN [CWD]: prints the pid stored in FILE when that process is alive, its
# command line contains PATTERN and (if given) its working directory is CWD; else fails.
# This keeps a recycled pid from being mistaken for (or killed as) one of our services.
pid_of() {
  local file=$1 pattern=$2 cwd=${3:-} pid=
  [[ -s $file ]] || return 1
  read -r pid <"$file" || true
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  proc_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern" || return 1
  if [[ -n $cwd ]]; then
    [[ $(readlink "/proc/$pid/cwd" 2>/dev/null) == "$cwd" ]] || return 1
  fi
  echo "$pid"
}

# Removes FILE when it names no live process of ours (stale after a crash or reboot).
clear_stale_pid() {
  local svc=$1 file=$2 pid=
  [[ -e $file ]] || return 0
  read -r pid <"$file" || true
  say "$svc" "removing stale pid file $file (pid ${pid:-?} is not our running $svc)"
  rm -f "$file"
}

# stop_pid SVC PID TIMEOUT_S: SIGTERM, wait, then SIGKILL.
stop_pid() {
  local svc=$1 pid=$2 timeout=$3 t0
  t0=$(now_us)
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_until "$timeout" "" proc_gone "$pid"; then
    warn "$svc" "pid $pid still running after ${timeout}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_until 10 "" proc_gone "$pid" || die "$svc" "pid $pid survived SIGKILL"
  fi
  say "$svc" "stopped (pid $pid, $(since "$t0"))"
}

# wait_until TIMEOUT_S PID CMD...: polls CMD every 0.25 s. Returns 0 once it succeeds,
# 1 on timeout, 2 as soon as PID (if non-empty) has died.
wait_until() {
  local timeout=$1 pid=$2 deadline
  shift 2
  deadline=$(($(now_us) + timeout * 1000000))
  while :; do
    "$@" >/dev/null 2>&1 && return 0
    if [[ -n $pid ]] && ! proc_alive "$pid"; then return 2; fi
    (($(now_us) < deadline)) || return 1
    sleep 0.25
  done
}

# mark_logs FILE...: remembers where the logs end now, so show_logs prints only newer lines.
declare -A LW_LOG_MARK=()
mark_logs() {
  local f
  for f in "$@"; do LW_LOG_MARK[$f]=$(stat -c %s "$f" 2>/dev/null || echo 0); done
}

# show_logs FILE...: the last 30 lines of each log (since its mark, if any), on stderr.
show_logs() {
  local f text
  for f in "$@"; do
    [[ -s $f ]] || continue
    text=$(tail -c +$((${LW_LOG_MARK[$f]:-0} + 1)) "$f" | tail -n 30)
    [[ -n $text ]] || continue
    printf -- '----- last lines of %s -----\n%s\n-----\n' "$f" "$text" >&2
  done
}

# --- ports ---------------------------------------------------------------------------------

# True when something accepts TCP connections on HOST:PORT.
# shellcheck disable=SC2016 # $0/$1 expand in the inner bash
port_open() { timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; }

# require_free_port SVC PORT ENVVAR: dies with a clear message when PORT is taken.
require_free_port() {
  local svc=$1 port=$2 var=$3
  if ! [[ $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
    die "$svc" "$var='$port' is not a port number"
  fi
  if port_open 127.0.0.1 "$port"; then
    die "$svc" "port $port on 127.0.0.1 is already in use by a process these scripts did not start (run dir $RUN_DIR); stop it or pick another port with $var=<port>"
  fi
  # A port in the ephemeral range can be taken by a client's own outgoing connection while
  # the service is down (a loopback client retrying 127.0.0.1:PORT may connect to itself),
  # and then the service cannot bind it again after a restart.
  local low high
  if read -r low high </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null &&
    ((port >= low && port <= high)); then
    say "$svc" "WARNING: port $port is in the ephemeral range $low-$high; a restart may find it taken by a client's connection; prefer a port below $low ($var)"
  fi
}

# host:port of the first entry of a Kafka bootstrap list (any PROTOCOL:// prefix dropped).
first_hostport() {
  local first=${1%%,*}
  echo "${first#*://}"
}

# --- packages ------------------------------------------------------------------------------

LW_APT_UPDATED=
LW_POLICY_RC_CREATED=

# apt_install SVC PKG...: installs Debian packages without letting them start system services.
apt_install() {
  local svc=$1 log
  shift
  [[ $EUID -eq 0 ]] || die "$svc" "needs the Debian package(s) $*; install them (as root: apt-get install $*) and retry"
  command -v apt-get >/dev/null || die "$svc" "needs $* but apt-get is not available; install them and retry"
  mkdir -p "$RUN_DIR"
  log="$RUN_DIR/apt.log"
  # A policy-rc.d answering 101 stops the packages' maintainer scripts from starting services.
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\n# temporary, written by loopwise deploy/local\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    LW_POLICY_RC_CREATED=1
    trap 'lw_cleanup' EXIT
  fi
  say "$svc" "installing $* with apt-get (first run only; log $log)…"
  if [[ -z $LW_APT_UPDATED ]]; then
    apt-get update -q >>"$log" 2>&1 || { show_logs "$log"; die "$svc" "apt-get update failed"; }
    LW_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -q --no-install-recommends "$@" \
    >>"$log" 2>&1 || { show_logs "$log"; die "$svc" "apt-get install $* failed"; }
  lw_cleanup
}

lw_cleanup() {
  if [[ -n $LW_POLICY_RC_CREATED ]]; then
    rm -f /usr/sbin/policy-rc.d
    LW_POLICY_RC_CREATED=
  fi
}

# Ensures psql is on PATH (Debian: postgresql-client).
ensure_psql() {
  command -v psql >/dev/null && return 0
  apt_install "${1:-postgres}" postgresql-client
  command -v psql >/dev/null || die "${1:-postgres}" "psql still missing after installing postgresql-client"
}

# True when the project venv can import MODULE (answer cached per run).
declare -A LW_VENV_HAS=()
venv_has() {
  if [[ -z ${LW_VENV_HAS[$1]:-} ]]; then
    LW_VENV_HAS[$1]=no
    if [[ -x $LW_PYTHON ]] && "$LW_PYTHON" -c "import $1" >/dev/null 2>&1; then
      LW_VENV_HAS[$1]=yes
    fi
  fi
  [[ ${LW_VENV_HAS[$1]} == yes ]]
}
