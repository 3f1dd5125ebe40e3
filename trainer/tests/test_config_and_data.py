"""Bad config and bad data stop the trainer with one clear message, before MLflow."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bankchurn.cli import main
from bankchurn.config import ConfigError, load_config
from bankchurn.data import SCHEMA, DataError, load_dataset
from bankchurn.generate import generate

FEATURES = list(SCHEMA)


def test_shipped_config_is_valid_and_sweeps_at_least_three_sets() -> None:
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "config.yaml")
    assert len(config.candidates()) >= 3
    assert len({tuple(sorted(c.items())) for c in config.candidates()}) == len(config.candidates())
    assert set(config.features.all) == set(SCHEMA)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model.type", "svm", "model.type"),
        ("split.test_size", 1.5, "split.test_size"),
        ("mlflow.experimnt", "x", "mlflow.experimnt"),
        ("target", "Age", "also listed as a feature"),
    ],
)
def test_bad_config_is_a_clear_error(write_config, key: str, value, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(write_config(**{key: value}))


def test_generator_is_seeded_and_realistic() -> None:
    a, b = generate(2000, seed=1), generate(2000, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(generate(2000, seed=2))
    assert 0.12 < a["Exited"].mean() < 0.30  # imbalanced like real churn data
    assert set(a["Geography"]) == {"France", "Germany", "Spain"}


def _csv(tmp_path: Path, frame: pd.DataFrame | None = None, text: str | None = None) -> Path:
    path = tmp_path / "bad.csv"
    if text is not None:
        path.write_text(text)
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns=["Age"]), "missing column"),
        (lambda f: f.assign(Age="old"), "'Age' must be int64"),
        (lambda f: f.assign(HasCrCard="maybe"), "'HasCrCard' must be boolean"),
        (lambda f: f.assign(Exited=2), "must be 0/1"),
        (lambda f: f.assign(Exited=0), "single class"),
        (lambda f: f.drop(columns=["Exited"]), "missing target"),
    ],
)
def test_bad_data_is_a_clear_error(tmp_path: Path, mutate, message: str) -> None:
    path = _csv(tmp_path, mutate(generate(200, seed=3)))
    with pytest.raises(DataError, match=message):
        load_dataset(path, FEATURES)


def test_empty_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty"):
        load_dataset(_csv(tmp_path, text=""), FEATURES)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nope.csv", FEATURES)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(DataError):
        load_dataset(binary, FEATURES)


def test_cli_stops_on_bad_data_before_logging_anything(write_config, tmp_path: Path, capsys) -> None:
    bad = _csv(tmp_path, generate(200, seed=3).drop(columns=["Gender"]))
    store = tmp_path / "mlruns"
    code = main(["--config", str(write_config(**{"data.path": str(bad)})), "--tracking-uri", f"file:{store}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing column(s) ['Gender']" in err
    assert len(err.strip().splitlines()) == 1
    assert not store.exists()
