"""Unit-test fixtures: a small generated dataset and a config pointing at it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bankchurn.generate import generate

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "config.yaml"


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "bank_churn.csv"
    generate(rows=1500, seed=7).to_csv(path, index=False)
    return path


@pytest.fixture
def write_config(tmp_path: Path, dataset: Path):
    """Write the shipped config with small models and the test dataset; apply overrides."""

    def write(**overrides) -> Path:
        raw = yaml.safe_load(CONFIG.read_text())
        raw["data"]["path"] = str(dataset)
        raw["model"]["params"]["n_estimators"] = 20
        raw["mlflow"]["experiment"] = "unit-churn"
        for dotted, value in overrides.items():
            node = raw
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node[key]
            node[leaf] = value
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return write
