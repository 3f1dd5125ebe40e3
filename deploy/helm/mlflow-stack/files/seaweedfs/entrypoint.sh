#!/bin/sh
# SeaweedFS as the stack's S3 store: one `weed mini` process (master, volume,
# filer and S3 gateway) with the stack's generated S3 credentials.
set -eu
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
