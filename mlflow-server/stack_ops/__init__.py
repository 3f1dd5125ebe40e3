"""Small, single-purpose jobs the mlflow-server image runs (see entrypoint.sh)."""
