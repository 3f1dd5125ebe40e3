"""The server's app moves what exists once it is built out of the garbage collector's reach
(app.frozen): a full collection then walks only what requests create."""

from __future__ import annotations

import gc

import pytest

from stack_ops.server import app


@pytest.fixture(autouse=True)
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_the_app_s_objects_are_frozen_and_the_app_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STACK_GC_FREEZE", raising=False)
    built = object()
    assert app.frozen(built) is built
    assert gc.get_freeze_count() > 10_000  # this process's modules, pytest's and MLflow's


def test_a_collection_then_walks_only_what_came_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STACK_GC_FREEZE", raising=False)
    before = ["built with the app"]  # a list: always tracked by the collector
    app.frozen(None)
    after = ["made by a request"]
    walked = {id(o) for o in gc.get_objects()}  # what a full collection would traverse
    assert id(after) in walked and id(before) not in walked


@pytest.mark.parametrize("off", ["false", "0", "no", "off", " False "])
def test_the_switch_leaves_the_collector_as_python_sets_it(monkeypatch: pytest.MonkeyPatch, off: str) -> None:
    monkeypatch.setenv("STACK_GC_FREEZE", off)
    app.frozen(None)
    assert gc.get_freeze_count() == 0
