"""Create or upgrade the tracking and auth schemas before the server starts.

Safe on every start: an empty database gets MLflow's tables, an older schema is
upgraded, an up-to-date one is left alone.
"""

from __future__ import annotations

import sys
import time

from stack_ops.common import Settings, StackError, die, env, log, read_secret

JOB = "migrate"
# libpq's words for a TLS failure no retry can fix: the certificate does not
# verify against the CA, names another host, or the server does not do TLS.
TLS_FAILURES = (
    "certificate verify failed",
    "does not match host name",
    "server does not support ssl",
    "root certificate file",
    "sslmode value",
)


def connection_problem(message: str) -> str | None:
    """What to fix when PostgreSQL's TLS can't be verified, or None when the
    error may pass (the server is starting, a network hiccup)."""
    first = message.strip().splitlines()[0] if message.strip() else message
    if any(words in message.lower() for words in TLS_FAILURES):
        return (
            f"TLS to PostgreSQL failed: {first}. Check POSTGRES_HOST (the name in the server's certificate), "
            "POSTGRES_SSLMODE and the CA in EXTERNAL_SECRETS_DIR/postgres_ca.crt (docs/configuration.md)"
        )
    if "password authentication failed" in message.lower():
        return f"PostgreSQL refused the password: {first}"
    return None


def wait_for_postgres(settings: Settings, timeout: float) -> None:
    """Connect once as the tracking role (bounded wait, one line per try); a
    StackError at once for what waiting can't fix (TLS, a wrong password)."""
    import sqlalchemy

    uri = settings.tracking_uri()
    where = f"{settings.postgres_host}:{settings.postgres_port}"
    engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": 10}, poolclass=sqlalchemy.pool.NullPool)
    started = time.monotonic()
    try:
        while True:
            try:
                with engine.connect() as conn:
                    ssl = conn.exec_driver_sql("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").scalar()
                log(JOB, f"PostgreSQL at {where} answers ({'TLS' if ssl else 'no TLS'})")
                return
            except sqlalchemy.exc.OperationalError as e:
                message = str(e.orig) if e.orig is not None else str(e)
                problem = connection_problem(message)
                if problem:
                    raise StackError(problem) from None
            elapsed = time.monotonic() - started
            if elapsed > timeout:
                raise StackError(f"PostgreSQL at {where} not reachable after {timeout:.0f}s: {message.strip()}")
            log(JOB, f"waiting for PostgreSQL at {where} ({elapsed:.0f}s / {timeout:.0f}s)")
            time.sleep(2)
    finally:
        engine.dispose()


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
        wait_for_postgres(settings, float(env("STACK_WAIT_SECONDS", "60")))
        migrate_tracking(settings.tracking_uri())
        migrate_auth(settings.auth_uri())
        protect_gateway_secrets(settings.tracking_uri())
    except StackError as e:
        return die(JOB, str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
