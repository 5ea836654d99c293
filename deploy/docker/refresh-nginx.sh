#!/usr/bin/env bash
# refresh-nginx.sh PROJECT: nginx resolves the `web` and `ws` service names once, when it
# (re)loads its config (deploy/nginx/upstreams/compose.conf). When `up` recreated web or ws
# containers after nginx started (new image, changed .env), their addresses may have
# changed: reload nginx (SIGHUP, graceful) so it resolves them again.
set -euo pipefail
project=$1
DOCKER=${DOCKER:-docker}
ids() { "$DOCKER" ps -q --filter "label=com.docker.compose.project=$project" \
          --filter "label=com.docker.compose.service=$1"; }
started() { date -d "$("$DOCKER" inspect -f '{{.State.StartedAt}}' "$1")" +%s%N; }
nginx=$(ids nginx)
[ -n "$nginx" ] || { echo "refresh-nginx: no nginx container in $project" >&2; exit 1; }
nginx_started=$(started "$nginx")
for id in $(ids web) $(ids ws); do
  if [ "$(started "$id")" -gt "$nginx_started" ]; then
    echo "refresh-nginx: web/ws started after nginx; reloading nginx to resolve them again"
    "$DOCKER" kill -s HUP "$nginx" >/dev/null
    exit 0
  fi
done
