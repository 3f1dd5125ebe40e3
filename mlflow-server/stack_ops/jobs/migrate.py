"""Create or upgrade the tracking and auth schemas before the server starts.

Safe on every start: an empty database gets MLflow's tables, an older schema is
upgraded, an up-to-date one is left alone.
"""

from __future__ import annotations

import sys

from stack_ops.common import Settings, StackError, die, log, read_secret

JOB = "migrate"


def migrate_tracking(uri: str) -> None:
    import sqlalchemy
    from mlflow.store.db.utils import (
        _all_tables_exist,
        _get_latest_schema_revision,
        _get_schema_version,
        _initialize_tables,
        _upgrade_db,
        create_sqlalchemy_engine_with_retry,
    )

    engine = create_sqlalchemy_engine_with_retry(uri)
    try:
        tables = [t for t in sqlalchemy.inspect(engine).get_table_names() if not t.startswith("alembic_")]
        if not tables:
            log(JOB, "tracking database is empty: creating MLflow's tables")
            _initialize_tables(engine)
        else:
            before = _get_schema_version(engine)
            head = _get_latest_schema_revision()
            if before == head and _all_tables_exist(engine):
                log(JOB, f"tracking schema is current ({head})")
            else:
                log(JOB, f"upgrading tracking schema {before} -> {head}")
                _upgrade_db(engine)
        log(JOB, f"tracking schema at {_get_schema_version(engine)}")
    finally:
        engine.dispose()


def migrate_auth(uri: str) -> None:
    import sqlalchemy
    from mlflow.server.auth.db import utils

    engine = sqlalchemy.create_engine(uri)
    try:
        utils.migrate(engine, "head")
        # The failed sign-in log the server's lockout reads (stack_ops/server/guard.py).
        from stack_ops.server.guard import TABLE_DDL

        with engine.begin() as conn:
            conn.exec_driver_sql(TABLE_DDL)
        # A trigger on every auth table tells the server's workers to drop their
        # auth caches at once (stack_ops/server/authcache.py). Raw cursor: the
        # DDL holds `%I`, which a parameterized execute would try to fill.
        from stack_ops.server.authcache import TRIGGER_DDL

        raw = engine.raw_connection()
        try:
            with raw.cursor() as cur:
                cur.execute(TRIGGER_DDL)
            raw.commit()
        finally:
            raw.close()
        log(JOB, "auth schema at head (plus stack_auth_failures and the cache triggers)")
    finally:
        engine.dispose()


def protect_gateway_secrets(uri: str) -> None:
    """AI-gateway secrets stored before the stack set its own KEK passphrase
    (under MLflow's built-in one) are rewrapped under the stack's, with MLflow's
    own rotation function (stack_ops/gateway_keys.py)."""
    from stack_ops.gateway_keys import mlflow_default_passphrase, rewrap

    report = rewrap(uri, read_secret("kek_passphrase"), [mlflow_default_passphrase()])
    if report.rewrapped:
        log(JOB, f"AI-gateway secrets: {report.rewrapped} moved from MLflow's built-in passphrase to the stack's")
    if report.unreadable:
        log(
            JOB,
            f"warning: {len(report.unreadable)} AI-gateway secret(s) are encrypted under another stack's "
            f"passphrase ({', '.join(report.unreadable[:5])}): restore with --kek-passphrase-file "
            "(docs/operations.md), or the gateway can't use them",
        )


def main() -> int:
    settings = Settings.from_env()
    try:
        migrate_tracking(settings.tracking_uri())
        migrate_auth(settings.auth_uri())
        protect_gateway_secrets(settings.tracking_uri())
    except StackError as e:
        return die(JOB, str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
