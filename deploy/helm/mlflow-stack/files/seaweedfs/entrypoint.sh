#!/bin/sh
# SeaweedFS as the stack's S3 store: one `weed mini` process (master, volume,
# filer and S3 gateway) with the stack's generated S3 credentials, as the
# image's unprivileged user. It refuses, with one line saying what to do, to
# start where it would damage or shadow data:
#   - the volume holds MinIO's data (a stack created before SeaweedFS became
#     the default);
#   - a store container of an older release still runs on the same volume;
#   - the volume is not writable (files left by an older, root-run release).
set -eu

fail() {
  echo "s3 (seaweedfs): $*" >&2
  exit 1
}

if [ -e /data/.minio.sys ]; then
  fail "the s3-data volume holds MinIO's data. Keep MinIO: set S3_STORE=minio in .env. Or move it to SeaweedFS: scripts/migrate-store (docs/operations.md)."
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
if [ ! -w /data ]; then
  fail "/data is not writable by uid $(id -u) (files of an older, root-run release). Once: docker compose run --rm --no-deps --user 0 --cap-add CHOWN --entrypoint chown s3 -R 1000:1000 /data"
fi

AWS_ACCESS_KEY_ID=$(cat /run/secrets/s3_access_key)
AWS_SECRET_ACCESS_KEY=$(cat /run/secrets/s3_secret_key)
export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
exec weed mini \
  -dir=/data \
  -ip.bind=0.0.0.0 \
  -s3.port=9000 \
  -s3.port.iceberg=0 \
  -s3.port.lance=0 \
  -admin.ui=false \
  -webdav=false \
  -master.telemetry=false
