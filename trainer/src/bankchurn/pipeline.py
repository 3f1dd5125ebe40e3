"""The scikit-learn pipeline: scale numeric, one-hot categorical, pass binary, classify."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from bankchurn.config import FeaturesConfig, ModelType

CLASSIFIERS = {
    "random_forest": RandomForestClassifier,
    "logistic_regression": LogisticRegression,
    "gradient_boosting": GradientBoostingClassifier,
}


class ModelParamError(ValueError):
    """A model parameter the classifier does not accept."""


def build_pipeline(features: FeaturesConfig, model_type: ModelType, params: dict[str, Any]) -> Pipeline:
    cls = CLASSIFIERS[model_type]
    unknown = sorted(set(params) - set(cls().get_params()))
    if unknown:
        raise ModelParamError(f"{model_type} does not accept parameter(s) {unknown}")
    transformers = [("num", StandardScaler(), features.numerical)]
    if features.categorical:
        transformers.append(("cat", OneHotEncoder(handle_unknown="ignore"), features.categorical))
    if features.binary:
        transformers.append(("bin", "passthrough", features.binary))
    return Pipeline(
        [
            ("preprocess", ColumnTransformer(transformers, verbose_feature_names_out=True)),
            ("classifier", cls(**params)),
        ]
    )


def feature_importance(pipeline: Pipeline) -> list[tuple[str, float]]:
    """(feature, importance) sorted descending: impurity importance for trees,
    |coefficient| on standardised inputs for logistic regression."""
    names = pipeline.named_steps["preprocess"].get_feature_names_out()
    clf = pipeline.named_steps["classifier"]
    if hasattr(clf, "feature_importances_"):
        values = np.asarray(clf.feature_importances_, dtype=float)
    else:
        values = np.abs(np.asarray(clf.coef_, dtype=float)).ravel()
    return sorted(zip((str(n) for n in names), values.tolist(), strict=True), key=lambda kv: -kv[1])
