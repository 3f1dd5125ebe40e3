#!/bin/sh
# One entrypoint, one task per container (stack_ops/, grouped by role):
#   server:   serve     the MLflow tracking server (default)
#             health    exit 0 when the server answers /health (the health check)
#   jobs:     secrets   generate missing secrets into the secrets volume (one-shot)
#             bucket    create the artifact bucket if missing (one-shot)
#             migrate   create or upgrade the tracking and auth schemas (one-shot)
#             accounts  ensure the service accounts (the trainer's) exist (one-shot)
#             tls       prepare nginx's HTTPS certificate (TLS variant, one-shot)
#             ui        copy MLflow's UI bundle for nginx to serve (one-shot)
#             gc        purge deleted runs past retention, on a schedule
#             nginx_metrics  nginx's stub_status as Prometheus metrics
#                       (compose.monitoring.yaml's nginx-exporter)
#   commands: users     add accounts, reset passwords (scripts/users)
#             objects   copy the bucket to/from a directory (backup and restore)
#             kek       the AI-gateway secrets' key: status, rewrap after a restore
# Anything else is executed as given (e.g. `mlflow --version`).
set -eu
cmd=${1:-serve}
case "$cmd" in
  serve|health) role=server ;;
  secrets|bucket|migrate|accounts|tls|ui|gc|nginx_metrics) role=jobs ;;
  users|objects|kek) role=commands ;;
  *) exec "$@" ;;
esac
shift || true
exec python -m "stack_ops.$role.$cmd" "$@"
