#!/usr/bin/env bash
# Local Kafka (KRaft), Redis and PostgreSQL on loopback, without Docker.
#
#   services.sh up|down|restart|status [kafka|redis|postgres ...]   (default: all three)
#
# A service whose address is already set (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL, DATABASE_URL) to
# something other than what these scripts run is "external": checked, never started or stopped
# (PostgreSQL migrations are applied to it all the same).
# Env: LOOPWISE_RUN_DIR (default <repo>/.run), LOOPWISE_CACHE_DIR, LOOPWISE_KAFKA_PORT (9092),
#      LOOPWISE_KAFKA_CONTROLLER_PORT (9093), LOOPWISE_REDIS_PORT (6390), LOOPWISE_PG_PORT (5440),
#      LOOPWISE_KAFKA_HEAP ("-Xms256m -Xmx512m").
# `up` writes <run dir>/services.env for `set -a; source`. `status` exits 3 unless all are up.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=deploy/local/lib.sh
source "$here/lib.sh"
# shellcheck source=deploy/local/kafka.sh
source "$here/kafka.sh"
# shellcheck source=deploy/local/redis.sh
source "$here/redis.sh"
# shellcheck source=deploy/local/postgres.sh
source "$here/postgres.sh"

ALL=(kafka redis postgres)

usage() {
  echo "usage: $0 up|down|restart|status [kafka|redis|postgres ...]" >&2
  exit 2
}

# Serialises up/down/restart per run dir (a first run may spend minutes fetching jars).
lock_run_dir() {
  exec 9>"$RUN_DIR/.lock"
  if ! flock -n 9; then
    say services "waiting for another services.sh run on $RUN_DIR…"
    flock -w 900 9 || die services "gave up waiting for the lock $RUN_DIR/.lock"
  fi
}

env_line() {
  if [[ $2 =~ ^[A-Za-z0-9_.,:/@%+=?-]*$ ]]; then
    printf '%s=%s\n' "$1" "$2"
  else
    printf '%s=%q\n' "$1" "$2"
  fi
}

write_env() {
  local file="$RUN_DIR/services.env"
  {
    echo "# Written by deploy/local/services.sh; use with: set -a; source $file; set +a"
    env_line KAFKA_BOOTSTRAP_SERVERS "$(kafka_addr)"
    env_line REDIS_URL "$(redis_addr)"
    env_line DATABASE_URL "$(postgres_addr)"
  } >"$file.tmp"
  mv "$file.tmp" "$file"
  say services "addresses written to $file"
}

main() {
  local cmd=${1:-} svc rc=0 t0 selected=()
  [[ -n $cmd ]] || usage
  shift
  for svc in "$@"; do
    [[ " ${ALL[*]} " == *" $svc "* ]] || usage
  done
  selected=("$@")
  ((${#selected[@]})) || selected=("${ALL[@]}")

  run_dir_init
  kafka_init
  redis_init
  postgres_init
  t0=$(now_us)
  case $cmd in
    up)
      lock_run_dir
      for svc in "${selected[@]}"; do "${svc}_up"; done
      write_env
      say services "up ($(since "$t0"))"
      ;;
    down)
      lock_run_dir
      for svc in "${selected[@]}"; do "${svc}_down"; done
      ;;
    restart)
      lock_run_dir
      for svc in "${selected[@]}"; do
        "${svc}_down"
        "${svc}_up"
      done
      write_env
      ;;
    status)
      for svc in "${selected[@]}"; do "${svc}_status" || rc=3; done
      return "$rc"
      ;;
    *) usage ;;
  esac
}

main "$@"
