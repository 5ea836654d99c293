#!/bin/sh
# Parley's Postgres backup and restore, run in the postgres image (it has the matching
# pg_dump/pg_restore). The same script serves `make backup` / `make restore` (the compose
# `backup` service) and the Kubernetes CronJob (deploy/backup/cronjob.yaml).
#
#   pg-backup.sh backup DIR    dump to DIR/parley-<UTC time>.dump, prune by BACKUP_KEEP_DAYS
#   pg-backup.sh check FILE    only the checks restore makes first (a dump; an empty database)
#   pg-backup.sh restore FILE  restore FILE into an empty database (FORCE=1: replace objects)
#
# Connection: DATABASE_URL (the app's own setting), else libpq's PG* variables.
set -eu

fail() { echo "pg-backup: $*" >&2; exit "${code:-1}"; }
url=${DATABASE_URL:-}

backup() {
  dir=$1
  keep=${BACKUP_KEEP_DAYS:-14}
  case "$keep" in '' | *[!0-9]*) fail "BACKUP_KEEP_DAYS must be a whole number of days, not '$keep'" ;; esac
  [ -d "$dir" ] && [ -w "$dir" ] || fail "$dir is not a writable directory"
  out="$dir/parley-$(date -u +%Y%m%dT%H%M%SZ).dump"
  # One transaction snapshot (pg_dump runs REPEATABLE READ): consistent while the app writes.
  # Written under a temporary name and checked, so a crash never leaves a dump that looks
  # complete; the retention below only ever counts finished ones.
  pg_dump --format=custom --compress=6 --file="$out.partial" ${url:+--dbname="$url"}
  pg_restore --list "$out.partial" >/dev/null || fail "the new dump $out.partial does not read back"
  mv "$out.partial" "$out"
  if [ "$keep" -gt 0 ]; then
    # Older than BACKUP_KEEP_DAYS days; the dump just written is never among them.
    find "$dir" -maxdepth 1 -type f -name 'parley-*.dump' -mmin +$((keep * 1440)) \
      -print -delete | sed 's/^/pg-backup: pruned /' >&2
  fi
  find "$dir" -maxdepth 1 -type f -name 'parley-*.dump.partial' -mmin +1440 -delete
  echo "pg-backup: wrote $out ($(wc -c < "$out") bytes)" >&2
  echo "$out"
}

# The checks before a restore; sets $clean for pg_restore. Exit 2: not a dump, 3: not empty.
check() {
  file=$1
  [ -f "$file" ] && [ -r "$file" ] || code=2 fail "$file is not a readable file"
  [ "$(head -c 5 "$file")" = PGDMP ] \
    || code=2 fail "$file is not a pg_dump custom-format archive (made by make backup)"
  pg_restore --list "$file" >/dev/null || code=2 fail "$file is damaged: pg_restore cannot read it"
  tables=$(psql -X -tA ${url:+--dbname="$url"} -c \
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')")
  clean=""
  if [ "$tables" -gt 0 ]; then
    [ "${FORCE:-0}" = 1 ] || code=3 fail "the database already has $tables tables; refusing \
to overwrite it. Restore into a fresh stack (make wipe-volumes first), or FORCE=1 to replace \
its contents with the dump's."
    clean="--clean --if-exists"
    echo "pg-backup: FORCE=1: replacing the $tables existing tables" >&2
  fi
}

restore() {
  check "$1"
  # One transaction: all of the dump or nothing. --no-owner/--no-privileges: every object
  # belongs to the user restoring it (the app's), whatever the role names were where the
  # dump was taken.
  # shellcheck disable=SC2086  # $clean is two options or none
  pg_restore --exit-on-error --single-transaction --no-owner --no-privileges $clean \
    ${url:+--dbname="$url"} "$file"
  echo "pg-backup: restored $file" >&2
}

case "${1:-}" in
  backup) backup "${2:-/backups}" ;;
  check | restore) [ -n "${2:-}" ] || code=2 fail "$1 needs a FILE"; "$1" "$2" ;;
  *) code=64 fail "usage: pg-backup.sh backup DIR | check FILE | restore FILE" ;;
esac
