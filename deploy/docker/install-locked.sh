#!/bin/sh
# install-locked.sh LOCKFILE: a virtualenv at /opt/venv with exactly LOCKFILE's packages, for
# the build stages of Dockerfile and loadtest/Dockerfile.
# --no-deps: the lock is complete, so nothing unpinned can slip in; `pip check` proves it.
# --only-binary: every locked package ships CPython 3.11 manylinux wheels, so the stage needs
# no compiler; a package that only had an sdist fails here, loudly.
# Behind a TLS-intercepting proxy, `make build EXTRA_CA_BUNDLE=/path/ca.pem` puts the proxy's
# CA at /tmp/build-ca/extra-ca.pem: added to (never replacing) the system trust store, for
# pip here only, and removed before the stage ends (no final stage copies /tmp/build-ca).
set -eu
if [ -s /tmp/build-ca/extra-ca.pem ]; then
  cat /etc/ssl/certs/ca-certificates.crt /tmp/build-ca/extra-ca.pem > /tmp/build-ca/trust.pem
  export PIP_CERT=/tmp/build-ca/trust.pem
fi
python -m venv /opt/venv
/opt/venv/bin/pip install --no-deps --only-binary=:all: -r "$1"
/opt/venv/bin/pip check
rm -rf /tmp/build-ca
