#!/usr/bin/env bash
# check-tls.sh ENV_FILE: before `make up` starts nginx, the certificate it is to serve must
# be there and readable by nginx's unprivileged user (uid 101 in its container).
set -euo pipefail
env_file=$1
value() { sed -n "s/^$1=//p" "$env_file" | tail -n 1; }
# Like compose: the caller's environment wins over the env file.
listen=${NGINX_LISTEN:-$(value NGINX_LISTEN)}
dir=${TLS_CERT_DIR:-$(value TLS_CERT_DIR)}
dir=${dir:-./certs}
# Docker would create a missing bind-mount source itself, owned by root; `make certs` could
# not write into that later.
mkdir -p "$dir"
[ "${listen:-tls/listen.conf}" = tls/listen.conf ] || exit 0
# A fresh checkout has no certificate yet: `make up` is one command, so the default
# directory gets a self-signed localhost pair (what `make certs` makes). A directory that
# was configured on purpose and is empty is a mistake worth stopping for.
if [ "$dir" = ./certs ] && [ ! -s "$dir/tls.crt" ] && [ ! -s "$dir/tls.key" ]; then
  echo "up: no certificate in $dir: making a self-signed one for localhost (browsers warn" \
       "until you trust $dir/tls.crt; \`make certs HOST=<name>\` for another host, or put a" \
       "real certificate there)" >&2
  "$(dirname "$0")/../tls/make-certs.sh" localhost "$dir" >&2
fi
for f in tls.crt tls.key; do
  if [ ! -s "$dir/$f" ]; then
    echo "up: HTTPS needs $dir/$f: run \`make certs\` (HOST=<name> for another host than" \
         "localhost), or set TLS_CERT_DIR, or NGINX_LISTEN=listen.conf for plain HTTP" \
         "(in $env_file)" >&2
    exit 1
  fi
done
readable() { [ "$(stat -c %u "$1")" = 101 ] || [ $(( 0$(stat -c %a "$1") & $2 )) -ne 0 ]; }
if ! readable "$dir" 1 || ! readable "$dir/tls.key" 4; then
  echo "up: nginx runs as uid 101 and cannot read $dir/tls.key: \`chown 101 $dir/tls.key\`" \
       "(or chmod o+r, and o+x on $dir)" >&2
  exit 1
fi
