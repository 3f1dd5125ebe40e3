"""Team accounts, from the command line (scripts/users runs this in the `users` service).

    users add NAME [--admin]      create an account; prints its generated password
    users reset-password NAME     give an existing account a new generated password
    users reset-admin-password    new admin password: auth store + secrets volume
    users list                    every account, admins marked
    users unlock ADDRESS          forget the failed sign-ins of a locked-out address
    users workspace-grant NAME WORKSPACE USE|MANAGE
                                  make an account a member of a workspace
                                  (MLFLOW_ENABLE_WORKSPACES=true; docs/workspaces.md)
    users workspace-revoke NAME WORKSPACE
                                  take that membership away

Passwords are generated (24 characters, ~143 bits) and printed once, on
stdout, with nothing else on that line. Bad input (an invalid or taken name,
an unknown account) is refused with one line on stderr and changes nothing.
Permissions per experiment or model are granted through MLflow's API or UI
(docs/security.md).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from pathlib import Path

from stack_ops.common import Settings, StackError, die, env, log, workspaces_enabled

JOB = "users"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
SECRETS_TARGET = Path(os.environ.get("STACK_SECRETS_WRITE_DIR", "/secrets"))
USAGE = (
    "usage: users add NAME [--admin] | users reset-password NAME | users reset-admin-password"
    " | users list | users unlock ADDRESS | users workspace-grant NAME WORKSPACE USE|MANAGE"
    " | users workspace-revoke NAME WORKSPACE"
)
# MLflow's two workspace-wide levels: USE reads, writes and creates; MANAGE also
# deletes and grants. Per experiment or model, MLflow's API and UI grant more.
WORKSPACE_LEVELS = ("USE", "MANAGE")


def _store():
    # Importing MLflow's auth package imports its FastAPI app, whose use of a
    # deprecated Starlette module warns on stderr: noise before this command's
    # own output, and nothing an operator can act on.
    warnings.filterwarnings("ignore", message=r"starlette\.middleware\.wsgi is deprecated")
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(Settings.from_env().auth_uri())
    return store


def _password() -> str:
    from stack_ops.jobs.secrets import SPECS, generate

    spec = next(s for s in SPECS if s.name == "mlflow_admin_password")
    return generate(spec)


def add(name: str, admin: bool) -> int:
    if not NAME.match(name):
        return die(
            JOB, f"invalid user name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-', starting alphanumeric"
        )
    store = _store()
    if store.has_user(name):
        return die(
            JOB, f"user {name!r} already exists (to give it a new password: scripts/users reset-password {name})"
        )
    password = _password()
    store.create_user(name, password, is_admin=admin)
    log(JOB, f"created {'admin' if admin else 'user'} {name!r}; password on the next line (shown once)")
    print(password, flush=True)
    return 0


def reset_password(name: str) -> int:
    if name == env("MLFLOW_ADMIN_USERNAME", "admin"):
        return die(JOB, "use `users reset-admin-password` for the admin: it also updates the secrets volume")
    if name == env("MLFLOW_TRAINER_USERNAME", "trainer"):
        return die(JOB, "the trainer's password is the trainer_password secret; `docker compose up` re-applies it")
    store = _store()
    if not store.has_user(name):
        return die(JOB, f"no user {name!r}")
    password = _password()
    store.update_user(name, password=password)
    log(JOB, f"new password for {name!r} on the next line (shown once)")
    print(password, flush=True)
    return 0


def reset_admin_password() -> int:
    from stack_ops.jobs.secrets import write

    if os.environ.get("MLFLOW_ADMIN_PASSWORD", "").strip():
        return die(JOB, "MLFLOW_ADMIN_PASSWORD is set in .env and wins on every `up`: change it there instead")
    target = SECRETS_TARGET / "mlflow_admin_password"
    if not target.exists():
        return die(JOB, f"{target} is missing: mount the secrets volume at {SECRETS_TARGET}")
    admin = env("MLFLOW_ADMIN_USERNAME", "admin")
    store = _store()
    if not store.has_user(admin):
        return die(JOB, f"no admin user {admin!r} in the auth store")
    password = _password()
    # Secret first: if the store update then failed, `accounts --sync-admin`
    # (scripts/restore uses it) re-applies the secret.
    write(target, password)
    store.update_user(admin, password=password, is_admin=True)
    log(JOB, f"new password for admin {admin!r} (also in the secrets volume) on the next line")
    print(password, flush=True)
    return 0


def list_users() -> int:
    for user in sorted(_store().list_users(), key=lambda u: u.username):
        print(f"{user.username}{'  (admin)' if user.is_admin else ''}")
    return 0


def unlock(address: str) -> int:
    import ipaddress

    import sqlalchemy

    try:
        ipaddress.ip_address(address)
    except ValueError:
        return die(JOB, f"{address!r} is not an IP address")
    engine = sqlalchemy.create_engine(Settings.from_env().auth_uri())
    try:
        with engine.begin() as conn:
            n = conn.execute(
                sqlalchemy.text("DELETE FROM stack_auth_failures WHERE address = :a"), {"a": address}
            ).rowcount
    finally:
        engine.dispose()
    log(JOB, f"{address}: {n} failed sign-in(s) forgotten; it may sign in again")
    return 0


def _workspace_member_check(name: str, workspace: str):
    """The auth store, once the account and the workspace are known to exist;
    StackError says which is missing, or that workspaces are off."""
    import sqlalchemy

    if not workspaces_enabled():
        raise StackError("workspaces are off: set MLFLOW_ENABLE_WORKSPACES=true in .env first (docs/workspaces.md)")
    store = _store()
    if not store.has_user(name):
        raise StackError(f"no user {name!r}")
    engine = sqlalchemy.create_engine(Settings.from_env().tracking_uri())
    try:
        with engine.connect() as conn:
            found = conn.execute(sqlalchemy.text("SELECT 1 FROM workspaces WHERE name = :w"), {"w": workspace}).first()
    finally:
        engine.dispose()
    if found is None:
        raise StackError(f"no workspace {workspace!r} (an admin creates it in the UI or with MLflow's API)")
    return store


def workspace_grant(name: str, workspace: str, level: str) -> int:
    level = level.upper()
    if level not in WORKSPACE_LEVELS:
        return die(JOB, f"{level!r} is not one of {', '.join(WORKSPACE_LEVELS)}")
    store = _workspace_member_check(name, workspace)
    store.set_workspace_permission(workspace, name, level)
    log(JOB, f"{name!r} may now {'use' if level == 'USE' else 'manage'} workspace {workspace!r}")
    return 0


def workspace_revoke(name: str, workspace: str) -> int:
    store = _workspace_member_check(name, workspace)
    if store.get_workspace_permission(workspace, name) is None:
        return die(JOB, f"{name!r} has no workspace-wide grant in {workspace!r}")
    store.delete_workspace_permission(workspace, name)
    log(JOB, f"{name!r} is no longer a member of workspace {workspace!r}")
    return 0


def main(argv: list[str]) -> int:
    try:
        match argv:
            case ["add", name]:
                return add(name, admin=False)
            case ["add", name, "--admin"]:
                return add(name, admin=True)
            case ["reset-password", name]:
                return reset_password(name)
            case ["reset-admin-password"]:
                return reset_admin_password()
            case ["list"]:
                return list_users()
            case ["unlock", address]:
                return unlock(address)
            case ["workspace-grant", name, workspace, level]:
                return workspace_grant(name, workspace, level)
            case ["workspace-revoke", name, workspace]:
                return workspace_revoke(name, workspace)
            case _:
                return die(JOB, USAGE)
    except StackError as e:
        return die(JOB, str(e))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
