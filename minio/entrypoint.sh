#!/bin/sh
# MinIO as the stack's S3 store (S3_STORE=minio), with the stack's generated
# S3 credentials as its root user. It refuses, with one line saying what to
# do, to start where it would damage or shadow data:
#   - the volume holds SeaweedFS's data;
#   - a store container of an older release still runs on the same volume.
set -eu

fail() {
  echo "s3 (minio): $*" >&2
  exit 1
}

if [ -d /data/filerldb2 ] || [ -e /data/mini.options ]; then
  fail "the s3-data volume holds SeaweedFS's data: remove S3_STORE=minio from .env to keep SeaweedFS."
fi
# Docker's DNS answers a container on this network at once, and sends any
# other name on to the host's resolvers. On a host whose resolvers do not
# answer (an offline machine) that took 20 s per name, 40 s of every start:
# a neighbour answers well within 2 s, so a lookup that takes longer means none.
lookup() {
  if command -v timeout >/dev/null 2>&1; then
    timeout 2 getent hosts "$1"
  else
    getent hosts "$1"
  fi
}
if command -v getent >/dev/null 2>&1; then
  for old in minio seaweedfs; do
    if lookup "$old" >/dev/null 2>&1; then
      fail "the old '$old' container still runs on this stack's network, on the same volume. Remove it first: docker compose up -d --remove-orphans"
    fi
  done
fi

MINIO_ROOT_USER=$(cat /run/secrets/s3_access_key)
MINIO_ROOT_PASSWORD=$(cat /run/secrets/s3_secret_key)
export MINIO_ROOT_USER MINIO_ROOT_PASSWORD
exec minio server /data --address :9000 --console-address :9001
