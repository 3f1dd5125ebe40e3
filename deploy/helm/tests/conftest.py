"""Fixtures: each scenario (default values, every example) rendered once per session."""

from __future__ import annotations

import pytest
from chart import Rendered, render, scenarios

SCENARIOS = scenarios()


@pytest.fixture(scope="session")
def renders() -> dict[str, Rendered]:
    return {name: render(values, name) for name, values in SCENARIOS.items()}


@pytest.fixture(params=sorted(SCENARIOS))
def rendered(request: pytest.FixtureRequest, renders: dict[str, Rendered]) -> Rendered:
    return renders[request.param]
