"""Training configuration: YAML loaded into typed, validated objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ModelType = Literal["random_forest", "logistic_regression", "gradient_boosting"]


class ConfigError(Exception):
    """The configuration file is missing, unreadable or invalid; the message says where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    path: Path
    version: str = Field(min_length=1)


class FeaturesConfig(_Strict):
    numerical: list[str] = Field(min_length=1)
    categorical: list[str] = Field(default_factory=list)
    binary: list[str] = Field(default_factory=list)

    @property
    def all(self) -> list[str]:
        return [*self.numerical, *self.categorical, *self.binary]

    @model_validator(mode="after")
    def _no_duplicates(self) -> FeaturesConfig:
        seen = [c for c in self.all if self.all.count(c) > 1]
        if seen:
            raise ValueError(f"columns listed in more than one feature group: {sorted(set(seen))}")
        return self


class SplitConfig(_Strict):
    test_size: float = Field(gt=0.0, lt=1.0)
    seed: int = 42


class ModelConfig(_Strict):
    type: ModelType
    params: dict[str, Any] = Field(default_factory=dict)


class MlflowConfig(_Strict):
    tracking_uri: str | None = None
    experiment: str = Field(min_length=1)
    run_name: str = Field(default="train", min_length=1)
    registered_model_name: str = Field(min_length=1)
    champion_alias: str = Field(default="champion", min_length=1)


class TrainConfig(_Strict):
    data: DataConfig
    features: FeaturesConfig
    target: str = "Exited"
    split: SplitConfig
    model: ModelConfig
    sweep: list[dict[str, Any]] = Field(default_factory=lambda: [{}])
    mlflow: MlflowConfig

    @model_validator(mode="after")
    def _target_not_a_feature(self) -> TrainConfig:
        if self.target in self.features.all:
            raise ValueError(f"target {self.target!r} is also listed as a feature")
        if not self.sweep:
            raise ValueError("sweep must list at least one parameter set ({} trains model.params as is)")
        return self

    def candidates(self) -> list[dict[str, Any]]:
        """The parameter sets of one sweep: each entry merged over model.params."""
        return [{**self.model.params, **overrides} for overrides in self.sweep]


def load_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(raw).__name__}")
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"config {path} is invalid: {problems}") from None
    if not config.data.path.is_absolute():
        config = config.model_copy(
            update={"data": config.data.model_copy(update={"path": (path.parent / config.data.path).resolve()})}
        )
    return config
