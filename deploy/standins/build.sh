#!/usr/bin/env bash
# Builds the stand-in base images (see README.md beside this file) from Debian packages:
# debootstrap a minimal bookworm, `docker import` it, then python/postgres/redis/nginx on top.
# Images that already exist are kept (dockerd's image store is the cache); FORCE=1 rebuilds.
set -euo pipefail
cd "$(dirname "$0")"

DOCKER=${DOCKER:-docker}
PREFIX=${STANDIN_PREFIX:-parley-standin}
SUITE=bookworm
BASE="$PREFIX/debian:$SUITE"
FORCE=${FORCE:-0}

log() { printf 'standins: %s\n' "$*" >&2; }

have_image() { [ "$FORCE" != 1 ] && "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# The Debian mirror this host already uses (deb822 or one-line sources), so the stand-ins get
# the same packages the host sees; DEBIAN_MIRROR overrides.
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
          2>/dev/null | grep -v '^\s*#' \
        | grep -oE '(https?|file)://[^ ]*/debian/?( |$)' | grep -v security | head -1 | tr -d ' ')
  echo "${uri:-http://deb.debian.org/debian}"
}

build_base() {
  if have_image "$BASE"; then log "$BASE present"; return; fi
  command -v debootstrap >/dev/null || {
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >/dev/null
  }
  local mirror rootfs
  mirror=$(debian_mirror)
  rootfs=$(mktemp -d /var/tmp/parley-standin-rootfs.XXXXXX)
  # shellcheck disable=SC2064  # expand now: the path is fixed
  trap "rm -rf '$rootfs'" EXIT
  log "debootstrap $SUITE from $mirror into $rootfs (a few minutes, once)"
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$rootfs" "$mirror" \
    > "$rootfs.log" 2>&1 || { tail -30 "$rootfs.log" >&2; exit 1; }
  rm -f "$rootfs.log"
  cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb ${mirror%/debian*}/debian-security $SUITE-security main
SOURCES
  # Like the official slim images: no recommends, no docs/man pages, no apt caches.
  cat > "$rootfs/etc/apt/apt.conf.d/90standin" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
APT
  cat > "$rootfs/etc/dpkg/dpkg.cfg.d/90standin-nodoc" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
         "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  log "importing $BASE"
  tar --numeric-owner -C "$rootfs" -c . \
    | "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' - "$BASE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
}

build_standin() {  # <dir> <tag>
  local dir=$1 tag="$PREFIX/$2"
  if have_image "$tag"; then log "$tag present"; return; fi
  log "building $tag"
  "$DOCKER" build -q --build-arg "BASE_IMAGE=$BASE" -t "$tag" "$dir" >/dev/null
}

build_base
build_standin python python:3.11
build_standin postgres postgres:15
build_standin redis redis:7
build_standin nginx nginx:1.22
log "ready: $BASE $PREFIX/python:3.11 $PREFIX/postgres:15 $PREFIX/redis:7 $PREFIX/nginx:1.22"
