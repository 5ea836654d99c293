#!/usr/bin/env bash
# roll.sh PROJECT COMPOSE...: the rolling half of `make upgrade` (after the image is built and
# migrations ran). Replaces every web container, then every ws container, with one of the
# current image, one at a time, so each service keeps serving throughout:
#   1. one more container of the service (`up --scale N+1 --no-recreate`: the others stay),
#   2. wait until it is healthy, reload nginx so it resolves the service name to it too,
#   3. SIGTERM one old container (gunicorn finishes in-flight requests; daphne closes its
#      sockets with 1012 and the clients reconnect to another replica and replay),
#   4. once it exited, remove it and reload nginx again, so nothing is sent to its address.
# COMPOSE... is the compose command line with project and files (the Makefile's $(DC)).
set -euo pipefail
project=$1
shift
compose=("$@")
DOCKER=${DOCKER:-docker}
here=$(dirname "$0")
# Time each role may take to drain on SIGTERM (docker-compose.prod.yml stop_grace_period).
declare -A grace=([web]=35 [ws]=30)

running() {
  "$DOCKER" ps -q --no-trunc --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$1" | sort
}

for service in web ws; do
  old=$(running "$service")
  count=$(grep -c . <<< "$old" || true)
  [ "$count" -gt 0 ] || { echo "roll: no running $service container in $project" >&2; exit 1; }
  for id in $old; do
    before=$(running "$service")
    echo "roll: $service: starting a new container beside ${id:0:12}"
    "${compose[@]}" up -d --no-deps --no-recreate --scale "$service=$((count + 1))" "$service"
    new=$(comm -13 <(echo "$before") <(running "$service"))
    [ "$(grep -c . <<< "$new" || true)" = 1 ] \
      || { echo "roll: expected one new $service container, got: ${new:-none}" >&2; exit 1; }
    "$here/wait-healthy.sh" "$project" "${ROLL_TIMEOUT:-180}" "$service"
    FORCE=1 "$here/refresh-nginx.sh" "$project"
    echo "roll: $service: draining ${id:0:12} (SIGTERM, up to ${grace[$service]} s)"
    "$DOCKER" stop -t "${grace[$service]}" "$id" >/dev/null
    "$DOCKER" rm "$id" >/dev/null
    FORCE=1 "$here/refresh-nginx.sh" "$project"
  done
done
echo "roll: every web and ws container runs the current image"
