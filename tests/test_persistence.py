"""Data survives restarts of every stateful service, and down + up."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapshots import populate, snapshot
from stack import Stack

pytestmark = pytest.mark.slow  # other stacks, restarts: `-m "not slow"` leaves it out


def test_data_survives_restarts_and_down_up(stack: Stack, tracking: None, tmp_path: Path) -> None:
    ids = populate(tmp_path)
    before = snapshot(ids, tmp_path / "before")
    assert before["history"] == [(s, s / 10) for s in range(10)]
    assert sum(before["predictions"]) > 0

    stack.compose("restart", "postgres", stack.s3_service, "mlflow-server")
    stack.up()
    stack.wait_http_ok()
    assert snapshot(ids, tmp_path / "after-restart") == before

    stack.compose("down")  # volumes kept
    stack.up()
    stack.wait_http_ok()
    assert snapshot(ids, tmp_path / "after-down-up") == before
