"""Purge deleted runs past their retention, on a schedule (`mlflow gc` underneath).

    gc                 loop: run once now, then every MLFLOW_GC_INTERVAL_SECONDS
    gc --once [--older-than 30d]   one pass, e.g. `docker compose exec gc /opt/stack/entrypoint.sh gc --once`

A run deleted in the UI or API is only marked `deleted`; this removes its rows
(params, metrics, tags) from PostgreSQL and its artifact objects from the
bucket once it has been deleted for longer than MLFLOW_GC_RETENTION
(`mlflow gc --older-than` syntax: 30d, 12h, 1d2h3m4s). Live runs are never touched.
With MLflow's workspaces on, every workspace is swept (`--all-workspaces`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from stack_ops.common import Settings, StackError, die, env, log, read_secret, workspaces_enabled

JOB = "gc"
HEARTBEAT = Path("/tmp/gc-heartbeat")
SERVER = "http://mlflow-server:5000"
RETENTION = re.compile(r"^(\d+d)?(\d+h)?(\d+m)?(\d+s)?$")


# `mlflow gc`, with its database URI (and password) taken from the environment:
# MLflow's gc reads it only as an argument, and an argument is on the process
# list every user of the host sees in `ps`.
MLFLOW_GC = (
    "import os, sys; from mlflow.cli import cli; "
    "sys.argv[1:1] = ['gc', '--backend-store-uri', os.environ.pop('STACK_GC_BACKEND_STORE_URI')]; "
    "cli(prog_name='mlflow')"
)


def run_gc(settings: Settings, older_than: str, workspaces: bool = False) -> bool:
    # Rows are deleted in the database directly; artifacts (mlflow-artifacts:/
    # URIs) through the server's proxy, as admin (only admins may delete any run's files).
    args = [
        sys.executable, "-c", MLFLOW_GC,
        "--tracking-uri", SERVER,
        "--older-than", older_than,
    ]  # fmt: skip
    if workspaces:  # MLflow's gc sees one workspace unless told otherwise
        args.append("--all-workspaces")
    started = time.monotonic()
    environment = {**_env(settings), "STACK_GC_BACKEND_STORE_URI": settings.tracking_uri()}
    proc = subprocess.run(args, capture_output=True, text=True, env=environment)
    took = time.monotonic() - started
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        log(JOB, f"mlflow gc failed after {took:.1f}s: {tail[0]}")
        return False
    purged = [line for line in proc.stdout.splitlines() if "permanently deleted" in line.lower()]
    log(JOB, f"pass done in {took:.1f}s (retention {older_than}): {len(purged)} deleted items purged")
    for line in purged:
        log(JOB, line.strip())
    return True


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_USERNAME": env("MLFLOW_ADMIN_USERNAME", "admin"),
        "MLFLOW_TRACKING_PASSWORD": read_secret("mlflow_admin_password"),
    }


def parse_settings(argv: list[str]) -> tuple[str, int]:
    """(retention, interval in seconds) from MLFLOW_GC_RETENTION (or `--older-than`)
    and MLFLOW_GC_INTERVAL_SECONDS; StackError says what is wrong."""
    older_than = env("MLFLOW_GC_RETENTION", "30d")
    if "--older-than" in argv:
        index = argv.index("--older-than")
        if index + 1 >= len(argv):
            raise StackError("--older-than needs a value, e.g. 30d")
        older_than = argv[index + 1]
    if not older_than or not RETENTION.fullmatch(older_than):
        raise StackError(f"retention {older_than!r} is not like 30d, 12h or 1d2h3m4s")
    interval = env("MLFLOW_GC_INTERVAL_SECONDS", "86400")
    if not interval.isdigit() or int(interval) < 60:
        raise StackError(f"MLFLOW_GC_INTERVAL_SECONDS={interval} must be a whole number >= 60")
    return older_than, int(interval)


def main(argv: list[str]) -> int:
    settings = Settings.from_env()
    once = "--once" in argv
    try:
        older_than, interval = parse_settings(argv)
        workspaces = workspaces_enabled()
        settings.tracking_uri()
        _env(settings)
    except StackError as e:
        return die(JOB, str(e))
    if once:
        return 0 if run_gc(settings, older_than, workspaces) else 1

    # As PID 1 the interpreter ignores SIGTERM unless asked: without this,
    # `docker compose stop` waited its full 10 s and then killed the loop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    scope = " in every workspace" if workspaces else ""
    log(JOB, f"purging runs deleted more than {older_than} ago{scope}, every {interval}s")
    while True:
        run_gc(settings, older_than, workspaces)
        deadline = time.monotonic() + interval
        while time.monotonic() < deadline:
            HEARTBEAT.touch()
            time.sleep(min(30, max(1, deadline - time.monotonic())))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
