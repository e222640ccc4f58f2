#!/usr/bin/env bash
# Applies deploy/migrations/*.sql to a database: in lexical order, each file once, each in its
# own transaction together with its row in schema_migrations(version, applied_at).
# Safe to run concurrently (an advisory lock serialises runs). Files must not BEGIN/COMMIT.
#
# Usage: deploy/local/migrate.sh [DATABASE_URL]      (default: $DATABASE_URL)
# Env:   LOOPWISE_MIGRATIONS_DIR  other directory of *.sql files (default deploy/migrations)
set -euo pipefail

url=${1:-${DATABASE_URL:-}}
if [[ -z $url ]]; then
  echo "usage: $0 DATABASE_URL" >&2
  exit 2
fi
dir=${LOOPWISE_MIGRATIONS_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../migrations" && pwd)}
shown=$(sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$url")

psql_bin=$(command -v psql || true)
if [[ -z $psql_bin ]]; then
  psql_bin=$(printf '%s\n' /usr/lib/postgresql/*/bin/psql | sort -V | tail -n 1)
  [[ -x $psql_bin ]] || {
    echo "migrate: psql not found; install postgresql-client" >&2
    exit 1
  }
fi
export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-10}
q() { "$psql_bin" -X -q -v ON_ERROR_STOP=1 -d "$url" "$@"; }

q -c "set client_min_messages = warning;
      create table if not exists schema_migrations (
        version text primary key,
        applied_at timestamptz not null default now())"
applied=$(q -tA -c "select version from schema_migrations")

files=()
if [[ -d $dir ]]; then
  while IFS= read -r -d '' f; do files+=("$f"); done < <(
    find "$dir" -maxdepth 1 -type f -name '*.sql' -print0 | LC_ALL=C sort -z
  )
fi

count=0
for f in "${files[@]}"; do
  version=$(basename "$f" .sql)
  grep -qxF -- "$version" <<<"$applied" && continue
  # The lock plus the re-check make a concurrent run skip what this one applied.
  result=$(q -1 -tA -v version="$version" -v file="$f" -f - <<'SQL'
select pg_advisory_xact_lock(hashtext('loopwise.schema_migrations'));
select exists (select 1 from schema_migrations where version = :'version') as done \gset
\if :done
\echo skipped
\else
\i :file
insert into schema_migrations (version) values (:'version');
\echo applied
\endif
SQL
  ) || {
    echo "migrate: $version failed on $shown; rolled back, nothing after it applied" >&2
    exit 1
  }
  if [[ $result == *applied ]]; then
    echo "migrate: applied $version"
    count=$((count + 1))
  fi
done
total=$(q -tA -c "select count(*) from schema_migrations")
echo "migrate: $shown is up to date ($count applied now, $total in total)"
