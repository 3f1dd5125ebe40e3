"""The stack's own code in the mlflow-server image, grouped by role.

- `server/`: runs in the mlflow-server container (the `serve` command, the app
  factory MLflow loads, the authorization function, the artifact fast path).
- `jobs/`: one-shot provisioning jobs and the periodic garbage collector.
- `commands/`: operator commands run on demand (scripts/users, backup, restore).
- `common.py`: settings and secrets shared by all of them.
"""
