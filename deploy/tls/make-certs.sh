#!/usr/bin/env bash
# Creates a self-signed certificate for local HTTPS (make certs HOST=chat.local).
# Browsers will warn unless you trust certs/tls.crt (docs/tls.md); tests pass it as their
# CA bundle.
set -euo pipefail
host="${1:-localhost}"
out="${2:-certs}"
mkdir -p "$out"
if [ -s "$out/tls.crt" ] && [ -s "$out/tls.key" ] && [ "$(cat "$out/host" 2>/dev/null)" = "$host" ]; then
  echo "certs: $out/tls.crt for $host already exists"; exit 0
fi
san="DNS:$host"
names="permitted;DNS:$host"
if [ "$host" = localhost ]; then
  san="$san,IP:127.0.0.1,IP:::1"
  names="$names,permitted;IP:127.0.0.1/255.255.255.255"
  names="$names,permitted;IP:::1/ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
fi
if [[ "$host" =~ ^[0-9.]+$ ]]; then
  san="IP:$host"
  names="permitted;IP:$host/255.255.255.255"
fi
# CA:TRUE so that clients (and browsers) can trust it as its own root; the name
# constraints keep its key from vouching for any other name, should it ever leak from a
# machine that trusts it.
openssl req -x509 -newkey rsa:2048 -sha256 -days 365 -nodes \
  -keyout "$out/tls.key" -out "$out/tls.crt" -subj "/CN=$host" \
  -addext "subjectAltName=$san" -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "nameConstraints=critical,$names" \
  -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" \
  -addext "extendedKeyUsage=serverAuth" 2>/dev/null
# Readable by others: compose mounts this directory into nginx, which runs as uid 101 and
# must read the key. It is a self-signed key for local use that nothing else trusts; a real
# certificate's key is better made readable to uid 101 alone (chown 101).
chmod 755 "$out"
chmod 644 "$out/tls.key"
echo "$host" > "$out/host"
echo "certs: wrote $out/tls.crt and $out/tls.key for $host"
