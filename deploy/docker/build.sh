#!/usr/bin/env bash
# build.sh IMAGE BASE_IMAGE [EXTRA_CA_BUNDLE [DOCKERFILE]]: builds the app image (or, with
# DOCKERFILE=loadtest/Dockerfile, the load generator's). The optional CA bundle
# (a TLS-intercepting proxy's) is placed in the build context for the build stage only and
# removed afterwards, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/../.."
image=$1 base=$2 ca=${3:-} dockerfile=${4:-Dockerfile}
DOCKER=${DOCKER:-docker}
staged=deploy/docker/build-ca/extra-ca.pem
rm -f "$staged"  # a leftover from an interrupted build must not be reused silently
if [ -n "$ca" ]; then
  [ -r "$ca" ] || { echo "build: EXTRA_CA_BUNDLE $ca is not a readable file" >&2; exit 1; }
  trap 'rm -f "$staged"' EXIT
  cp "$ca" "$staged"
fi
echo "build: $image on $base${ca:+ (extra CA for the build stage: $ca)}"
"$DOCKER" build --force-rm --build-arg "BASE_IMAGE=$base" -f "$dockerfile" -t "$image" .
