# Parley: one image for every process role (web, ws, migrate, manage, pgbouncer); see
# docs/compose.md. Build with `make build`.
#
# BASE_IMAGE defaults to the official slim Python image; CI on machines without a registry
# passes a stand-in built from Debian packages (deploy/standins/).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# --- build stage: the locked dependencies, installed into a virtualenv --------------------
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
# The proxy CA, if any (`make build EXTRA_CA_BUNDLE=...`), for pip in this stage only, and
# the lock: deploy/docker/install-locked.sh says how they are used.
COPY deploy/docker/build-ca/ /tmp/build-ca/
COPY deploy/docker/install-locked.sh /tmp/install-locked.sh
COPY requirements.lock /tmp/requirements.lock
RUN sh /tmp/install-locked.sh /tmp/requirements.lock
# PgBouncer's binary from the Debian release's package, for the final stage (see there).
# hadolint ignore=DL3008,DL3003
RUN apt-get update \
 && mkdir -p /opt/pgbouncer && cd /tmp \
 && apt-get download pgbouncer \
 && dpkg-deb -x pgbouncer_*.deb /tmp/pgbouncer-deb \
 && cp /tmp/pgbouncer-deb/usr/sbin/pgbouncer /opt/pgbouncer/pgbouncer \
 && rm -rf /tmp/pgbouncer* /var/lib/apt/lists/*

# --- final stage: slim, non-root ------------------------------------------------------------
FROM ${BASE_IMAGE}
ARG APP_UID=10001
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/src \
    DJANGO_SETTINGS_MODULE=config.settings \
    STATIC_ROOT=/app/staticfiles
# PgBouncer for the image's pgbouncer role (transaction pooling in front of Postgres): the
# binary of the Debian release's package (builder stage) and the two libraries it needs
# beyond the base. Not the package itself: it depends on postgresql-common, which brings
# Perl (+150 MB) for cluster scripts the role never runs. `pgbouncer --version` proves
# every library it links is here.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libc-ares2 libevent-2.1-7 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
COPY --from=builder /opt/pgbouncer/pgbouncer /usr/sbin/pgbouncer
RUN /usr/sbin/pgbouncer --version
RUN groupadd --system --gid "$APP_UID" parley \
 && useradd --system --uid "$APP_UID" --gid parley --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin parley
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY deploy/docker/entrypoint.sh /usr/local/bin/parley-entrypoint
COPY deploy/docker/healthcheck.py /usr/local/bin/parley-healthcheck
COPY deploy/pgbouncer/config.py /usr/local/bin/parley-pgbouncer-config
COPY deploy/pgbouncer/pgbouncer.ini /etc/parley/pgbouncer/pgbouncer.ini
COPY deploy/gunicorn.conf.py deploy/gunicorn.conf.py
COPY src/ src/
# Hashed, compressed static files for whitenoise. The SECRET_KEY is a random throwaway that
# lives only for this command: settings refuse to import without one, and none is kept.
# Bytecode is compiled here because PYTHONDONTWRITEBYTECODE stops the (read-only) app
# user from writing it at run time.
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(64))')" \
    STATIC_MANIFEST=1 DATABASE_URL=sqlite:////tmp/collectstatic.sqlite3 \
    python src/manage.py collectstatic --noinput -v 0 \
 && python -m compileall -q src \
 && rm -f /tmp/collectstatic.sqlite3
USER ${APP_UID}:${APP_UID}
EXPOSE 8000 8001 6432
# /readyz of whichever server the role runs (web or ws); one-shot roles report healthy.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "/usr/local/bin/parley-healthcheck"]
ENTRYPOINT ["parley-entrypoint"]
CMD ["web"]
