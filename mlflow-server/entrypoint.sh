#!/bin/sh
# One entrypoint, one job per container:
#   serve     the MLflow tracking server (default)
#   secrets   generate missing secrets into the secrets volume (one-shot)
#   bucket    create the artifact bucket if missing (one-shot)
#   migrate   create or upgrade the tracking and auth schemas (one-shot)
#   accounts  ensure the service accounts (the trainer's) exist (one-shot)
#   health    exit 0 when the server answers /health (used by the health check)
#   objects   copy the bucket to/from a directory (backup and restore)
#   gc        purge deleted runs past retention, on a schedule
#   users     add accounts, reset passwords (scripts/users)
#   routes    print the server's route table as JSON (the security tests)
#   tls       prepare nginx's HTTPS certificate (TLS variant, one-shot)
# Anything else is executed as given (e.g. `mlflow --version`).
set -eu
cmd=${1:-serve}
case "$cmd" in
  serve|secrets|bucket|migrate|accounts|health|objects|gc|users|routes|tls)
    shift || true
    exec python -m "stack_ops.$cmd" "$@" ;;
  *)
    exec "$@" ;;
esac
