"""jobs/gc.py: the retention and interval settings, checked before any pass runs."""

from __future__ import annotations

import pytest

from stack_ops.common import StackError
from stack_ops.jobs import gc


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_GC_RETENTION", raising=False)
    monkeypatch.delenv("MLFLOW_GC_INTERVAL_SECONDS", raising=False)


def test_defaults_are_30_days_once_a_day() -> None:
    assert gc.parse_settings([]) == ("30d", 86400)


@pytest.mark.parametrize("retention", ["30d", "12h", "45m", "90s", "1d2h3m4s", "1d4s", "0d"])
def test_retention_syntax_of_mlflow_gc(monkeypatch: pytest.MonkeyPatch, retention: str) -> None:
    monkeypatch.setenv("MLFLOW_GC_RETENTION", retention)
    assert gc.parse_settings(["--once"]) == (retention, 86400)


@pytest.mark.parametrize("retention", ["30", "forever", "1h30d", "d", "30 d", "-1d", "1.5d", "30D", "1w"])
def test_other_retentions_are_refused(monkeypatch: pytest.MonkeyPatch, retention: str) -> None:
    monkeypatch.setenv("MLFLOW_GC_RETENTION", retention)
    with pytest.raises(StackError) as caught:
        gc.parse_settings([])
    assert str(caught.value) == f"retention {retention!r} is not like 30d, 12h or 1d2h3m4s"


def test_an_empty_setting_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_GC_RETENTION", "  ")
    assert gc.parse_settings([])[0] == "30d"


def test_older_than_wins_over_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_GC_RETENTION", "30d")
    assert gc.parse_settings(["--once", "--older-than", "12h"]) == ("12h", 86400)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--older-than"], "--older-than needs a value, e.g. 30d"),
        (["--older-than", ""], "retention '' is not like 30d, 12h or 1d2h3m4s"),
        (["--older-than", "--once"], "retention '--once' is not like 30d, 12h or 1d2h3m4s"),
    ],
)
def test_older_than_needs_a_retention(argv: list[str], message: str) -> None:
    with pytest.raises(StackError) as caught:
        gc.parse_settings(argv)
    assert str(caught.value) == message


def test_a_retention_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(StackError):
        gc.parse_settings(["--older-than", "30d\n"])


@pytest.mark.parametrize(("interval", "seconds"), [("60", 60), ("3600", 3600), (" 86400 ", 86400)])
def test_interval_of_a_minute_or_more(monkeypatch: pytest.MonkeyPatch, interval: str, seconds: int) -> None:
    monkeypatch.setenv("MLFLOW_GC_INTERVAL_SECONDS", interval)
    assert gc.parse_settings([]) == ("30d", seconds)


@pytest.mark.parametrize("interval", ["59", "0", "-60", "1.5e3", "1h", "abc"])
def test_other_intervals_are_refused(monkeypatch: pytest.MonkeyPatch, interval: str) -> None:
    monkeypatch.setenv("MLFLOW_GC_INTERVAL_SECONDS", interval)
    with pytest.raises(StackError) as caught:
        gc.parse_settings([])
    assert str(caught.value) == f"MLFLOW_GC_INTERVAL_SECONDS={interval} must be a whole number >= 60"


def test_main_prints_the_problem_and_fails(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_GC_RETENTION", "forever")
    assert gc.main(["--once"]) == 1
    assert capsys.readouterr().err == "[gc] error: retention 'forever' is not like 30d, 12h or 1d2h3m4s\n"


def test_main_with_good_settings_goes_on_to_the_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # No secrets volume here: main() got past the settings and stops at the first secret.
    assert gc.main(["--once", "--older-than", "1d"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("[gc] error: secret ") and "mlflow_db_password is missing" in err


@pytest.mark.parametrize(("workspaces", "swept"), [(False, []), (True, ["--all-workspaces"])])
def test_with_workspaces_on_every_workspace_is_swept(
    monkeypatch: pytest.MonkeyPatch, workspaces: bool, swept: list[str]
) -> None:
    import subprocess

    from stack_ops.common import Settings

    calls = []

    def fake_run(args, **kwargs):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, stdout="", stderr="")

    monkeypatch.setattr(gc.subprocess, "run", fake_run)
    monkeypatch.setattr(gc, "_env", lambda settings: {})
    monkeypatch.setenv("POSTGRES_HOST", "db")
    monkeypatch.setattr(Settings, "tracking_uri", lambda self: "postgresql://db/mlflow")
    assert gc.run_gc(Settings.from_env(), "7d", workspaces)
    assert calls[0][1:3] == ["-c", gc.MLFLOW_GC]
    assert calls[0][calls[0].index("--older-than") + 1] == "7d"
    assert [a for a in calls[0] if a == "--all-workspaces"] == swept


def test_gc_takes_the_database_uri_from_its_environment_not_its_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    """Every user of the host sees a container's command lines in `ps`: the
    URI, password included, reaches `mlflow gc` through the environment, and
    MLflow's own gc command receives it."""
    import os
    import subprocess
    import sys

    from stack_ops.common import Settings

    uri = "postgresql+psycopg2://mlflow:S3cret%40x@db:5432/mlflow"
    calls = []

    def fake_run(args, **kwargs):
        calls.append((args, kwargs["env"]))
        return subprocess.CompletedProcess(args, 0, stdout="", stderr="")

    monkeypatch.setattr(gc.subprocess, "run", fake_run)
    monkeypatch.setattr(gc, "_env", lambda settings: {"PATH": "/usr/bin"})
    monkeypatch.setenv("POSTGRES_HOST", "db")
    monkeypatch.setattr(Settings, "tracking_uri", lambda self: uri)
    assert gc.run_gc(Settings.from_env(), "7d")
    ((args, environment),) = calls
    assert not [a for a in args if "S3cret" in a or "postgresql" in a]
    assert environment["STACK_GC_BACKEND_STORE_URI"] == uri
    # The program hands it to MLflow's own gc: here on a SQLite store, which
    # it creates at that URI (and nothing on the command line names it).
    monkeypatch.undo()  # the real subprocess.run again
    store = tmp_path / "gc.db"
    environment["STACK_GC_BACKEND_STORE_URI"] = f"sqlite:///{store}"
    proc = subprocess.run(
        [sys.executable, "-c", gc.MLFLOW_GC, "--tracking-uri", "http://127.0.0.1:9", "--older-than", "7d"],
        env={**os.environ, **environment, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert store.stat().st_size > 0
