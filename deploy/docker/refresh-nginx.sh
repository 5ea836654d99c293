#!/usr/bin/env bash
# refresh-nginx.sh PROJECT: nginx resolves the `web` and `ws` service names once, when it
# (re)loads its config (deploy/nginx/upstreams/compose.conf). When `up` recreated web or ws
# containers after nginx started (new image, changed .env), their addresses may have
# changed: reload nginx (SIGHUP, graceful) so it resolves them again, and wait until the
# new workers have replaced the old ones (until then an old worker may still answer 502).
set -euo pipefail
project=$1
DOCKER=${DOCKER:-docker}
ids() { "$DOCKER" ps -q --filter "label=com.docker.compose.project=$project" \
          --filter "label=com.docker.compose.service=$1"; }
started() { date -d "$("$DOCKER" inspect -f '{{.State.StartedAt}}' "$1")" +%s%N; }
# PIDs of nginx workers that accept connections (not "worker process is shutting down").
workers() {
  # shellcheck disable=SC2016  # expanded by the shell inside the container
  "$DOCKER" exec "$1" sh -c 'for d in /proc/[0-9]*; do
      c=$(tr "\0" " " < "$d/cmdline" 2>/dev/null) || continue
      case "$c" in "nginx: worker process "*) [ "${c%%shutting*}" = "$c" ] && echo "${d#/proc/}";; esac
    done; true' | sort  # true: a shutting-down worker listed last is no failure
}
nginx=$(ids nginx)
[ -n "$nginx" ] || { echo "refresh-nginx: no nginx container in $project" >&2; exit 1; }
# Since nginx last resolved the names: its start, or the last reload done here (a marker
# in its tmpfs), so an unchanged stack is not reloaded again.
nginx_started=$(started "$nginx")
reloaded=$("$DOCKER" exec "$nginx" cat /tmp/nginx/reloaded-at 2>/dev/null || echo 0)
[ "$reloaded" -gt "$nginx_started" ] && nginx_started=$reloaded
# FORCE=1: reload anyway (`make upgrade` after removing a replica: nginx would keep its
# address and try it, in vain, until the next reload).
[ "${FORCE:-0}" = 1 ] && nginx_started=0
for id in $(ids web) $(ids ws); do
  if [ "$(started "$id")" -gt "$nginx_started" ]; then
    echo "refresh-nginx: web/ws changed since nginx resolved them; reloading nginx"
    old=$(workers "$nginx")
    "$DOCKER" kill -s HUP "$nginx" >/dev/null
    for _ in $(seq 150); do
      now=$(workers "$nginx")
      if [ -n "$now" ] && [ -z "$(comm -12 <(echo "$old") <(echo "$now"))" ]; then
        "$DOCKER" exec "$nginx" sh -c 'date +%s%N > /tmp/nginx/reloaded-at'
        echo "refresh-nginx: reloaded"
        exit 0
      fi
      sleep 0.2
    done
    echo "refresh-nginx: nginx did not finish reloading within 30 s" >&2
    exit 1
  fi
done
