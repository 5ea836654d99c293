#!/usr/bin/env bash
# make-env.sh TEMPLATE OUT: writes OUT from TEMPLATE with a freshly generated SECRET_KEY and
# POSTGRES_PASSWORD. Never overwrites an existing OUT (it holds the database's password).
set -euo pipefail
template=$1 out=$2
if [ -e "$out" ]; then
  echo "make-env: $out exists; leaving it alone" >&2
  exit 0
fi
# URL- and .env-safe (no '$', quotes or '/'), so it can sit in DATABASE_URL unescaped.
secret() { head -c "$1" /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d '='; }
umask 077
tmp=$(mktemp "$out.XXXXXX")
sed -e "s|^SECRET_KEY=.*|SECRET_KEY=$(secret 48)|" \
    -e "s|^POSTGRES_PASSWORD=.*|POSTGRES_PASSWORD=$(secret 24)|" "$template" > "$tmp"
grep -q '^SECRET_KEY=.\{50,\}' "$tmp" && grep -q '^POSTGRES_PASSWORD=.\{20,\}' "$tmp" || {
  rm -f "$tmp"
  echo "make-env: $template needs SECRET_KEY= and POSTGRES_PASSWORD= lines" >&2
  exit 1
}
mv "$tmp" "$out"
echo "make-env: wrote $out (fresh SECRET_KEY and POSTGRES_PASSWORD); review it before going live"
