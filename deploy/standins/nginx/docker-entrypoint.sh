#!/bin/sh
# The official nginx image's entrypoint contract: before nginx starts, run the executable
# scripts in /docker-entrypoint.d (template rendering), then exec the command.
set -e
if [ "$1" = nginx ] || [ "$1" = nginx-debug ]; then
  for f in /docker-entrypoint.d/*.sh; do
    [ -x "$f" ] && { echo "$0: running $f"; "$f"; }
  done
fi
exec "$@"
