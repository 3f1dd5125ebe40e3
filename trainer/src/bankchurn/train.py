"""One sweep: train every candidate, log everything, promote the best to `champion`."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd
import skops.io
from mlflow.models import infer_signature
from sklearn.model_selection import train_test_split

from bankchurn import __version__
from bankchurn.config import TrainConfig
from bankchurn.data import file_sha256, load_dataset
from bankchurn.evaluate import figures, metrics
from bankchurn.pipeline import build_pipeline, feature_importance

TAG_FINGERPRINT = "bankchurn.fingerprint"
INTEGER_HINT = "Hint: Inferred schema contains integer column"
TAG_SWEEP = "bankchurn.sweep_id"
TAG_VERSION = "bankchurn.model_version"


@dataclass(frozen=True)
class SweepResult:
    fingerprint: str
    skipped: bool
    run_ids: list[str]
    champion_run_id: str
    champion_version: str
    champion_auc: float


def code_version() -> str:
    """The package version plus a hash of its source (or BANKCHURN_CODE_VERSION, e.g. a git sha)."""
    explicit = os.environ.get("BANKCHURN_CODE_VERSION", "").strip()
    if explicit:
        return explicit
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def fingerprint(config: TrainConfig, data_sha256: str, code: str) -> str:
    """Same config (wherever the data lives and whichever server), data and code: same fingerprint."""
    relevant = config.model_dump(mode="json", exclude={"data": {"path"}, "mlflow": {"tracking_uri"}})
    payload = json.dumps({"config": relevant, "data": data_sha256, "code": code}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def pip_requirements() -> list[str]:
    """The serving environment, pinned to what trained the model (no slow inference)."""
    import numpy
    import sklearn

    return [
        f"mlflow=={mlflow.__version__}",
        f"scikit-learn=={sklearn.__version__}",
        f"skops=={skops.__version__}",
        f"pandas=={pd.__version__}",
        f"numpy=={numpy.__version__}",
    ]


def trusted_types(model) -> list[str]:
    """The minimal skops allow-list: exactly the types skops does not trust by default."""
    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def without_integer_hint(fn):
    """MLflow hints, for every schema it infers (the dataset, the signature,
    the input example), that integer columns can't hold missing values. The
    columns stay integers anyway: a double schema would refuse the int64
    frames callers send ("Can not safely convert int64 to float64",
    tests/test_train.py), and this data has no missing values by construction
    (generate.py), the case the hint is about. So the hint is not printed."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=INTEGER_HINT)
            return fn(*args, **kwargs)

    return wrapper


@without_integer_hint
def run_sweep(
    config: TrainConfig,
    config_path: Path,
    *,
    tracking_uri: str | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
    public_url: str | None = None,
) -> SweepResult:
    """Train every candidate of the config's sweep, log each as a run with its
    model registered, and promote the best. `public_url`: the address people
    open the UI at (the tracking URI may be an address only containers reach);
    run links are printed with it instead of MLflow's own."""
    # Everything that can fail on bad input fails here, before MLflow is touched.
    features = config.features.all
    x, y = load_dataset(config.data.path, features, config.target)
    candidates = config.candidates()
    for params in candidates:
        build_pipeline(config.features, config.model.type, params)
    data_sha = file_sha256(config.data.path)
    code = code_version()
    fp = fingerprint(config, data_sha, code)
    log(f"data {config.data.path} ({len(x)} rows, sha256 {data_sha[:12]}), churn rate {y.mean():.1%}")

    uri = tracking_uri or config.mlflow.tracking_uri
    if uri:
        mlflow.set_tracking_uri(uri)
    uri = mlflow.get_tracking_uri()
    log(f"tracking server {uri}")
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3.17 refuses the file store unless told it is wanted.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        log("file store: MLflow keeps it in maintenance mode; prefer sqlite:/// or a server for real use")
    if public_url:
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    client = mlflow.MlflowClient()
    experiment = mlflow.set_experiment(config.mlflow.experiment)
    exp_id = experiment.experiment_id

    if not force:
        done = client.search_runs(
            [exp_id],
            filter_string=f"tags.`{TAG_FINGERPRINT}` = '{fp}' and attributes.status = 'FINISHED'",
            max_results=len(candidates) + 1,
        )
        if len(done) >= len(candidates):
            log(
                f"nothing changed since sweep {fp[:12]} (same config, data and code): "
                f"{len(done)} finished runs already logged; nothing new logged (use --force to train again)"
            )
            return _promote(client, config, exp_id, fp, [r.info.run_id for r in done], skipped=True, log=log)

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=config.split.test_size, random_state=config.split.seed, stratify=y
    )
    dataset = mlflow.data.from_pandas(
        pd.concat([x, y.rename(config.target)], axis=1),
        source=str(config.data.path),
        name=f"bank_churn@{config.data.version}",
        targets=config.target,
    )
    sweep_id = uuid.uuid4().hex
    run_ids = []
    for index, params in enumerate(candidates, start=1):
        run_name = f"{config.mlflow.run_name}-{index}"
        log(f"[{index}/{len(candidates)}] training {config.model.type} {params}")
        with mlflow.start_run(run_name=run_name) as run:
            mlflow.set_tags(
                {
                    "model_type": config.model.type,
                    "data_version": config.data.version,
                    "code_version": code,
                    TAG_FINGERPRINT: fp,
                    TAG_SWEEP: sweep_id,
                }
            )
            mlflow.log_params(
                {
                    "model": config.model.type,
                    "data_version": config.data.version,
                    "train_size": len(x_train),
                    "test_size": len(x_test),
                    "test_fraction": config.split.test_size,
                    "split_seed": config.split.seed,
                    **{f"model.{k}": v for k, v in params.items()},
                }
            )
            mlflow.log_input(dataset, context="training")

            pipeline = build_pipeline(config.features, config.model.type, params).fit(x_train, y_train)
            proba = pipeline.predict_proba(x_test)[:, 1]
            scores = metrics(y_test.to_numpy(), proba)
            mlflow.log_metrics(scores)

            importance = feature_importance(pipeline)
            for name, fig in figures(y_test.to_numpy(), proba, importance).items():
                mlflow.log_figure(fig, f"figures/{name}")
                plt.close(fig)
            buf = io.StringIO()
            pd.DataFrame(importance, columns=["feature", "importance"]).to_csv(buf, index=False)
            mlflow.log_text(buf.getvalue(), "feature_importance.csv")
            mlflow.log_dict(config.model_dump(mode="json"), "config/config.yaml")
            mlflow.log_artifact(str(config_path), "config/source")

            signature = infer_signature(x_train, pipeline.predict_proba(x_train.head(200)))
            info = mlflow.sklearn.log_model(
                pipeline,
                name="model",
                signature=signature,
                input_example=x_test.head(5),
                serialization_format="skops",
                skops_trusted_types=trusted_types(pipeline),
                pyfunc_predict_fn="predict_proba",
                pip_requirements=pip_requirements(),
                registered_model_name=config.mlflow.registered_model_name,
            )
            version = str(info.registered_model_version)
            mlflow.set_tag(TAG_VERSION, version)
            run_ids.append(run.info.run_id)
            log(f"[{index}/{len(candidates)}] auc_roc {scores['auc_roc']:.4f}, registered as version {version}")
            if public_url:
                link = f"{public_url.rstrip('/')}/#/experiments/{exp_id}/runs/{run.info.run_id}"
                log(f"[{index}/{len(candidates)}] {link}")
    return _promote(client, config, exp_id, fp, run_ids, skipped=False, log=log)


def _promote(
    client: mlflow.MlflowClient,
    config: TrainConfig,
    exp_id: str,
    fp: str,
    run_ids: list[str],
    *,
    skipped: bool,
    log: Callable[[str], None],
) -> SweepResult:
    """Give the best registered run of the experiment (by test AUC) the champion alias."""
    best = client.search_runs(
        [exp_id],
        filter_string=f"attributes.status = 'FINISHED' and tags.`{TAG_VERSION}` != '' and metrics.auc_roc > 0",
        order_by=["metrics.auc_roc DESC", "attributes.start_time DESC"],
        max_results=1,
    )[0]
    name, alias = config.mlflow.registered_model_name, config.mlflow.champion_alias
    version = best.data.tags[TAG_VERSION]
    auc = best.data.metrics["auc_roc"]
    data_version = best.data.tags.get("data_version", "unknown")
    client.set_registered_model_alias(name, alias, version)
    client.update_model_version(
        name,
        version,
        description=(
            f"{alias}: AUC {auc:.4f} on the held-out test set of data version {data_version} "
            f"(run {best.info.run_id}, {best.data.tags.get('model_type', '?')})."
        ),
    )
    client.update_registered_model(
        name, description="Bank-churn classifier: predict_proba gives [P(stay), P(exit)] per customer."
    )
    log(f"{name}@{alias} -> version {version} (auc_roc {auc:.4f}, run {best.info.run_id})")
    return SweepResult(fp, skipped, run_ids, best.info.run_id, version, auc)
