#!/usr/bin/env bash
# wait-healthy.sh PROJECT [TIMEOUT_S] [SERVICE]: waits until every container of the compose
# project (or of its SERVICE only: `make restore` starts postgres alone) is running and
# healthy (one-shot containers: exited 0). Works for compose v2 and 1.29 alike (both label
# containers com.docker.compose.project). Fails early on a failed one-shot or a
# container that keeps restarting, showing the end of its log.
set -euo pipefail
project=$1 timeout=${2:-300} service=${3:-}
DOCKER=${DOCKER:-docker}
deadline=$((SECONDS + timeout))
last=""
while :; do
  ids=$("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$project" \
          ${service:+--filter "label=com.docker.compose.service=$service"})
  if [ -z "$ids" ]; then
    echo "wait-healthy: no containers for project $project" >&2
    exit 1
  fi
  # name state health exit-code restart-policy restart-count
  # shellcheck disable=SC2086  # one argument per id
  table=$("$DOCKER" inspect -f '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}} {{.State.ExitCode}} {{.HostConfig.RestartPolicy.Name}} {{.RestartCount}}' $ids | sed 's|^/||' | sort)
  pending=0 failed=""
  while read -r name state health code policy restarts; do
    if [ "$state" = exited ] && { [ "$policy" = no ] || [ -z "$policy" ]; }; then
      [ "$code" = 0 ] || failed="$failed $name"
    elif [ "$restarts" -ge 3 ]; then
      failed="$failed $name"
    elif [ "$state" != running ] || { [ "$health" != - ] && [ "$health" != healthy ]; }; then
      pending=1
    fi
  done <<< "$table"
  if [ "$table" != "$last" ]; then
    printf 'wait-healthy: %s\n' "$(date +%T)"; printf '  %s\n' "${table//$'\n'/$'\n'  }"
    last=$table
  fi
  if [ -n "$failed" ]; then
    for name in $failed; do
      echo "wait-healthy: $name failed or keeps restarting; the end of its log:" >&2
      "$DOCKER" logs --tail 30 "$name" >&2 || true
    done
    exit 1
  fi
  [ "$pending" = 0 ] && { echo "wait-healthy: all healthy"; exit 0; }
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "wait-healthy: not healthy after ${timeout}s; see: make logs" >&2
    exit 1
  fi
  sleep 2
done
