#!/bin/sh
# MinIO's health check, whichever image MINIO_IMAGE names: the official image
# ships `mc`; community builds may ship only curl or wget.
set -eu
if command -v mc >/dev/null 2>&1; then
  exec mc ready local
fi
url=http://127.0.0.1:9000/minio/health/live
if command -v curl >/dev/null 2>&1; then
  exec curl -fsS -o /dev/null "$url"
fi
exec wget -q -O /dev/null "$url"
