#!/usr/bin/env bash
# Creates a self-signed certificate for local HTTPS (make certs HOST=chat.local).
# Browsers will warn unless you trust certs/<host>.crt; tests pass it as their CA bundle.
set -euo pipefail
host="${1:-localhost}"
out="${2:-certs}"
mkdir -p "$out"
chmod 700 "$out"
if [ -s "$out/tls.crt" ] && [ -s "$out/tls.key" ] && [ "$(cat "$out/host" 2>/dev/null)" = "$host" ]; then
  echo "certs: $out/tls.crt for $host already exists"; exit 0
fi
san="DNS:$host"
[ "$host" = localhost ] && san="$san,IP:127.0.0.1,IP:::1"
if [[ "$host" =~ ^[0-9.]+$ ]]; then san="IP:$host"; fi
openssl req -x509 -newkey rsa:2048 -sha256 -days 365 -nodes \
  -keyout "$out/tls.key" -out "$out/tls.crt" -subj "/CN=$host" \
  -addext "subjectAltName=$san" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign" \
  -addext "extendedKeyUsage=serverAuth" 2>/dev/null
chmod 600 "$out/tls.key"
echo "$host" > "$out/host"
echo "certs: wrote $out/tls.crt and $out/tls.key for $host"
