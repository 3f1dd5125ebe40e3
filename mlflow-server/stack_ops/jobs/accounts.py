"""Ensure the stack's service accounts exist in the auth store (idempotent).

The trainer gets its own non-admin account, `trainer`, whose password is the
generated `trainer_password` secret. Only that password is copied into the
`trainer-credentials` volume, so the trainer container never sees the stack's
other secrets. Runs before the server starts (directly against the auth
database, after `migrate`).

`--sync-admin` also sets the admin's password to the `mlflow_admin_password`
secret (scripts/restore uses it: a restored user store keeps everyone's
logins but the stack's own accounts follow this stack's secrets).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from stack_ops.common import Settings, StackError, die, env, log, read_secret, workspaces_enabled

JOB = "accounts"
DEFAULT_WORKSPACE = "default"  # MLflow's reserved workspace: everything logged before workspaces
CREDENTIALS_DIR = Path(os.environ.get("TRAINER_CREDENTIALS_DIR", "/trainer-credentials"))


def ensure_user(store, username: str, password: str) -> str:
    if not store.has_user(username):
        store.create_user(username, password, is_admin=False)
        return "created"
    if not store.authenticate_user(username, password):
        store.update_user(username, password=password)
        return "password updated"
    return "unchanged"


def main(argv: list[str]) -> int:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    if argv not in ([], ["--sync-admin"]):
        return die(JOB, "usage: accounts [--sync-admin]")

    settings = Settings.from_env()
    username = env("MLFLOW_TRAINER_USERNAME", "trainer")
    try:
        password = read_secret("trainer_password")
        store = SqlAlchemyStore()
        store.init_db(settings.auth_uri())
    except StackError as e:
        return die(JOB, str(e))
    if username == env("MLFLOW_ADMIN_USERNAME", "admin"):
        return die(JOB, "MLFLOW_TRAINER_USERNAME must differ from the admin username")
    state = ensure_user(store, username, password)
    log(JOB, f"service account {username!r}: {state} (not an admin)")
    try:
        workspaces = workspaces_enabled()
    except StackError as e:
        return die(JOB, str(e))
    if workspaces:
        # With workspaces on, creating an experiment or a model needs USE on
        # the workspace; the trainer logs into `default`, as before.
        store.set_workspace_permission(DEFAULT_WORKSPACE, username, "USE")
        log(JOB, f"service account {username!r}: may use the {DEFAULT_WORKSPACE!r} workspace")
    if argv == ["--sync-admin"]:
        admin = env("MLFLOW_ADMIN_USERNAME", "admin")
        admin_password = read_secret("mlflow_admin_password")
        if not store.has_user(admin):
            store.create_user(admin, admin_password, is_admin=True)
        store.update_user(admin, password=admin_password, is_admin=True)
        log(JOB, f"admin {admin!r}: password set from the secrets volume")

    if CREDENTIALS_DIR.is_dir():
        target = CREDENTIALS_DIR / "password"
        tmp = CREDENTIALS_DIR / ".password.tmp"
        tmp.write_text(password + "\n")
        tmp.chmod(0o440)
        tmp.replace(target)
        log(JOB, "trainer credentials written to the trainer-credentials volume")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
