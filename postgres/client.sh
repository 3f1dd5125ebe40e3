#!/bin/sh
# compose.external.yaml's `pgclient`: run psql, pg_dump or pg_restore against
# the external PostgreSQL as the owner role of one of the stack's databases
# (STACK_DB=mlflow or mlflow_auth), with that role's password from the secrets
# volume and the same TLS settings as the MLflow containers. The database and
# role are libpq's defaults (PGDATABASE, PGUSER), so a command needs neither.
#   docker compose -f compose.yaml -f compose.external.yaml run --rm -T -e STACK_DB=mlflow pgclient psql -c 'SELECT 1'
set -eu
case "${STACK_DB:-}" in
  mlflow) PGDATABASE=$MLFLOW_DB_NAME PGUSER=$MLFLOW_DB_USER secret=mlflow_db_password ;;
  mlflow_auth) PGDATABASE=$MLFLOW_AUTH_DB_NAME PGUSER=$MLFLOW_AUTH_DB_USER secret=auth_db_password ;;
  *) echo "pgclient: STACK_DB must be mlflow or mlflow_auth, not '${STACK_DB:-}'" >&2; exit 2 ;;
esac
PGHOST=$POSTGRES_HOST
PGPORT=$POSTGRES_PORT
PGSSLMODE=$POSTGRES_SSLMODE
PGPASSWORD=$(cat "/run/secrets/$secret")
export PGDATABASE PGUSER PGHOST PGPORT PGSSLMODE PGPASSWORD
if [ -f "$POSTGRES_SSLROOTCERT" ]; then
  PGSSLROOTCERT=$POSTGRES_SSLROOTCERT
  export PGSSLROOTCERT
fi
exec "$@"
