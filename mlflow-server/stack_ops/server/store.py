"""MLflow's S3 artifact repository, with the store's errors in MLflow's terms.

Registered for the `s3` scheme through MLflow's own plugin entry point
(`mlflow.artifact_repository`, pyproject.toml), so every route of the server
that reads or writes the bucket uses it: `get-artifact`, the logged-model and
model-version artifact routes, the artifact proxy, listing, and `mlflow gc`.

Upstream, a missing object surfaces as botocore's `ClientError (404)`, which
MLflow reports as `500 INTERNAL_ERROR`; its client retries a 500 with backoff
for about four minutes, so `mlflow.pyfunc.load_model("runs:/<id>/model")` of
an MLflow 3 model (which first looks for `model` in the run's artifacts) took
~250 s to fall back to the logged model. Here:

- a missing object raises `RESOURCE_DOES_NOT_EXIST` (404): the client moves on;
- an unreachable or failing store raises `TEMPORARILY_UNAVAILABLE` (503).

Object keys, listing and everything else are MLflow's, unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, TEMPORARILY_UNAVAILABLE
from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository as MlflowS3ArtifactRepository

# botocore error codes that mean "no such object".
MISSING = frozenset({"404", "NoSuchKey", "NotFound"})


def translate(exc: Exception, path: str) -> MlflowException | None:
    """The MlflowException a store error stands for, or None to let it through."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in MISSING:
            return MlflowException(f"Artifact '{path}' does not exist.", RESOURCE_DOES_NOT_EXIST)
        if code == "NoSuchBucket":
            return MlflowException(
                f"The artifact store has no bucket '{error.get('BucketName', '')}' (run the bucket job).",
                TEMPORARILY_UNAVAILABLE,
            )
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status >= 500:
            return MlflowException(f"The artifact store failed ({code}); try again.", TEMPORARILY_UNAVAILABLE)
        return None
    if isinstance(exc, BotoCoreError):  # connection refused, timeouts, DNS
        return MlflowException(f"The artifact store is unreachable: {exc}", TEMPORARILY_UNAVAILABLE)
    return None


@contextlib.contextmanager
def store_errors(path: str) -> Iterator[None]:
    try:
        yield
    except MlflowException:
        raise
    except Exception as exc:
        translated = translate(exc, path)
        if translated is None:
            raise
        raise translated from exc


class S3ArtifactRepository(MlflowS3ArtifactRepository):
    """MLflow's S3 repository; store errors become 404 / 503 MlflowExceptions."""

    def _download_file(self, remote_file_path, local_path):
        with store_errors(remote_file_path):
            return super()._download_file(remote_file_path, local_path)

    def list_artifacts(self, path=None):
        with store_errors(path or ""):
            return super().list_artifacts(path)

    def log_artifact(self, local_file, artifact_path=None):
        with store_errors(artifact_path or ""):
            return super().log_artifact(local_file, artifact_path)

    def log_artifacts(self, local_dir, artifact_path=None):
        with store_errors(artifact_path or ""):
            return super().log_artifacts(local_dir, artifact_path)

    def delete_artifacts(self, artifact_path=None):
        with store_errors(artifact_path or ""):
            return super().delete_artifacts(artifact_path)
