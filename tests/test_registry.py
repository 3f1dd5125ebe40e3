"""A model logged in a run, registered, aliased, loaded by alias, predicts the same."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from stack import unique


def test_register_alias_load_predict(tracking: None) -> None:
    x, y = make_classification(n_samples=400, n_features=6, random_state=7)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    model = LogisticRegression(max_iter=500).fit(frame, y)
    expected = model.predict(frame)

    name = unique("churn-registry")
    mlflow.set_experiment(unique("registry"))
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(frame, expected),
            input_example=frame.head(3),
            registered_model_name=name,
        )
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{name}'")
    assert [(v.version, v.run_id) for v in versions] == [("1", run.info.run_id)]
    client.set_registered_model_alias(name, "champion", "1")
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert info.model_uri.startswith("models:/")

    loaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    got = np.asarray(loaded.predict(frame))
    assert got.shape == expected.shape
    assert (got == expected).all()
    assert loaded.metadata.signature is not None
