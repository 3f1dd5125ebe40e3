#!/usr/bin/env bash
# Runs once, on an empty data directory (the postgres image's initdb hook).
# Creates the tracking database and the auth database, each owned by its own
# login role, with the passwords the `secrets` job generated. PUBLIC gets no
# access to either, so one role can't read the other's database.
set -euo pipefail

secrets=${STACK_SECRETS_DIR:-/run/secrets}
tracking_db=${MLFLOW_DB_NAME:-mlflow}
tracking_user=${MLFLOW_DB_USER:-mlflow}
auth_db=${MLFLOW_AUTH_DB_NAME:-mlflow_auth}
auth_user=${MLFLOW_AUTH_DB_USER:-mlflow_auth}

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres --no-psqlrc \
  -v tracking_db="$tracking_db" -v tracking_user="$tracking_user" \
  -v tracking_pw="$(cat "$secrets/mlflow_db_password")" \
  -v auth_db="$auth_db" -v auth_user="$auth_user" \
  -v auth_pw="$(cat "$secrets/auth_db_password")" <<'SQL'
CREATE ROLE :"tracking_user" LOGIN PASSWORD :'tracking_pw';
CREATE DATABASE :"tracking_db" OWNER :"tracking_user";
REVOKE ALL ON DATABASE :"tracking_db" FROM PUBLIC;

CREATE ROLE :"auth_user" LOGIN PASSWORD :'auth_pw';
CREATE DATABASE :"auth_db" OWNER :"auth_user";
REVOKE ALL ON DATABASE :"auth_db" FROM PUBLIC;
SQL
echo "created databases $tracking_db (owner $tracking_user) and $auth_db (owner $auth_user)"
