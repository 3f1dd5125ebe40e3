"""The benchmark's baseline: `mlflow server` as a user would stand it up by hand.

MLflow's default flags (no auth app, default workers, default pool, no
nginx), on the stack's PostgreSQL (its own database, created here) and S3
store (prefix `baseline/`). The only non-default flag beyond the stores is
`--host 0.0.0.0`, without which no other container can reach it.
"""

from __future__ import annotations

import os
import sys

import psycopg2
from psycopg2 import sql

from stack_ops.common import Settings, read_secret

DB = "mlflow_baseline"


def create_database(settings: Settings) -> None:
    conn = psycopg2.connect(
        host=settings.postgres_host,
        port=settings.postgres_port,
        user="postgres",
        password=read_secret("postgres_password"),
        dbname="postgres",
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,))
        if cur.fetchone() is None:
            cur.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(DB), sql.Identifier(settings.tracking_user)
                )
            )
    conn.close()


def main() -> int:
    os.environ["MLFLOW_DB_NAME"] = DB
    settings = Settings.from_env()
    create_database(settings)
    os.environ.update(settings.s3_env())
    args = [
        "mlflow", "server",
        "--host", "0.0.0.0",
        "--port", "5000",
        "--backend-store-uri", settings.tracking_uri(),
        "--serve-artifacts",
        "--artifacts-destination", f"s3://{settings.bucket}/baseline",
    ]  # fmt: skip
    print(f"[baseline] mlflow server, default flags, database {DB}, s3://{settings.bucket}/baseline", flush=True)
    os.execvp(args[0], args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
