"""bankchurn-train: run one tracked sweep from a YAML config."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException

from bankchurn.config import ConfigError, load_config
from bankchurn.data import DataError
from bankchurn.pipeline import ModelParamError
from bankchurn.train import run_sweep


def _log(message: str) -> None:
    print(f"[bankchurn] {message}", flush=True)


def _password_from_file() -> None:
    """Containers get the password as a file (MLFLOW_TRACKING_PASSWORD_FILE), never in the environment."""
    path = os.environ.get("MLFLOW_TRACKING_PASSWORD_FILE")
    if path and not os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        os.environ["MLFLOW_TRACKING_PASSWORD"] = Path(path).read_text().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train, log and promote bank-churn models with MLflow.")
    parser.add_argument("--config", type=Path, default=Path("configs/config.yaml"))
    parser.add_argument("--tracking-uri", help="overrides mlflow.tracking_uri and MLFLOW_TRACKING_URI")
    parser.add_argument("--force", action="store_true", help="train a new sweep even if nothing changed")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        _password_from_file()
        result = run_sweep(
            config,
            args.config,
            tracking_uri=args.tracking_uri,
            force=args.force,
            log=_log,
            public_url=os.environ.get("MLFLOW_PUBLIC_URL") or None,
        )
    except (ConfigError, DataError, ModelParamError) as e:
        print(f"[bankchurn] error: {e}", file=sys.stderr)
        return 2
    except MlflowException as e:
        print(f"[bankchurn] error from the tracking server: {e.message}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"[bankchurn] error: {e}", file=sys.stderr)
        return 1
    state = "unchanged" if result.skipped else f"{len(result.run_ids)} runs logged"
    _log(f"done: {state}; champion is version {result.champion_version} (auc_roc {result.champion_auc:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
