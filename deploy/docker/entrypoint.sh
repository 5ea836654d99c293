#!/bin/sh
# One image, several process roles. `exec` replaces this shell, so the server is the process
# that receives the stop signal (SIGTERM) and drains; nothing is left between them.
set -eu

usage() {
  cat >&2 <<'USAGE'
usage: <image> ROLE [ARGS...]
  web       gunicorn + uvicorn workers (deploy/gunicorn.conf.py), after wait_for_deps
  ws        daphne (python -m config.serve_ws), after wait_for_deps
  migrate   python src/manage.py migrate --noinput
  manage    python src/manage.py ARGS... (e.g. createsuperuser, shell)
  pgbouncer PgBouncer in front of PGBOUNCER_SERVER_URL (deploy/pgbouncer/config.py)
USAGE
}

role=${1:-web}
[ "$#" -gt 0 ] && shift

# Prometheus multiprocess files: per container, emptied at start (a restarted container's old
# files would be summed into the new run). Only the serving roles export metrics.
metrics_dir() {
  if [ -n "${PROMETHEUS_MULTIPROC_DIR:-}" ]; then
    rm -rf "$PROMETHEUS_MULTIPROC_DIR"
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
  fi
}

case "$role" in
  web)
    metrics_dir
    python src/manage.py wait_for_deps
    exec gunicorn -c deploy/gunicorn.conf.py "$@" config.asgi:application
    ;;
  ws)
    metrics_dir
    python src/manage.py wait_for_deps
    exec python -m config.serve_ws "$@"
    ;;
  migrate)
    exec python src/manage.py migrate --noinput "$@"
    ;;
  manage)
    if [ "$#" -eq 0 ]; then
      echo "parley: 'manage' needs a management command, e.g. 'manage createsuperuser'" >&2
      exit 64
    fi
    exec python src/manage.py "$@"
    ;;
  pgbouncer)
    # Its files go to /tmp (the root filesystem is read-only); it holds a password.
    umask 077
    python /usr/local/bin/parley-pgbouncer-config /tmp/pgbouncer >/dev/null
    exec /usr/sbin/pgbouncer "$@" /tmp/pgbouncer/pgbouncer.ini
    ;;
  -h | --help | help)
    usage
    ;;
  *)
    echo "parley: unknown role '$role'" >&2
    usage
    exit 64
    ;;
esac
