"""Back up and restore the whole stack: both databases, every artifact, a manifest.

    scripts/backup  [--out DIR]              one timestamped archive, while serving
    scripts/restore ARCHIVE [--force] [--kek-passphrase-file FILE]
                                             into a fresh, empty stack; verified
    scripts/migrate-store [--keep DIR]       move every artifact to a fresh SeaweedFS
                                             store, verified, and switch the stack to it

The archive (mlflow-backup-<UTC time>.tar.gz) holds:
    mlflow.dump, mlflow_auth.dump   pg_dump custom format, made by the postgres container
    objects/<key>, objects.json     every object of the bucket, with size and sha256
    manifest.json                   MLflow version, row counts, sha256 of every file above

Runs `docker compose` in the repository (COMPOSE_FILE / COMPOSE_PROJECT_NAME apply).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack import ROOT, ComposeError, Stack, last_json, sha256_file  # noqa: E402  (scripts/stack.py)

STACK = Stack.current()  # COMPOSE_PROJECT_NAME / COMPOSE_FILE apply, as for `docker compose`
DATABASES = {"mlflow": "mlflow", "mlflow_auth": "mlflow_auth"}  # database -> owner role
COUNTS = {
    "experiments": ("mlflow", "SELECT count(*) FROM experiments"),
    "runs": ("mlflow", "SELECT count(*) FROM runs"),
    "metrics": ("mlflow", "SELECT count(*) FROM metrics"),
    "registered_models": ("mlflow", "SELECT count(*) FROM registered_models"),
    "model_versions": ("mlflow", "SELECT count(*) FROM model_versions"),
    "aliases": ("mlflow", "SELECT count(*) FROM registered_model_aliases"),
    "users": ("mlflow_auth", "SELECT count(*) FROM users"),
}


class BackupError(Exception):
    """Something the operator must look at; nothing was changed."""


def log(message: str) -> None:
    print(f"[backup] {message}", flush=True)


def compose(*args: str, stdin=None, stdout=None, check: bool = True) -> subprocess.CompletedProcess:
    """`docker compose` on the operator's stack (scripts/stack.py); a failure is a BackupError."""
    try:
        return STACK.compose(*args, stdin=stdin, stdout=stdout, check=check, timeout=None)
    except ComposeError as e:
        raise BackupError(str(e).strip()[-800:]) from None


_bundled: bool | None = None


def bundled_postgres() -> bool:
    """True when the stack runs its own `postgres` service; False with
    compose.external.yaml (an external PostgreSQL, reached by `pgclient`)."""
    global _bundled
    if _bundled is None:
        _bundled = "postgres" in STACK.services()
    return _bundled


def pg(db: str, *command: str) -> list[str]:
    """The compose arguments that run a PostgreSQL client `command` on `db`:
    as the superuser in the bundled postgres container, or as the database's
    owner role in `pgclient` (compose.external.yaml: libpq's environment names
    the host, role, password and verified TLS; a conninfo with no database
    falls back to it)."""
    if bundled_postgres():
        return ["exec", "-T", "postgres", *command, "-U", "postgres", "-d", db]
    return ["run", "--rm", "--no-deps", "-T", "-e", f"STACK_DB={db}", "pgclient", *command,
            "-d", "application_name=mlflow-stack-backup"]  # fmt: skip


def sql(db: str, query: str) -> str:
    return compose(*pg(db, "psql", "-tAc", query)).stdout.strip()


def counts() -> dict[str, int]:
    """Row counts, one query per database (one client container each without a bundled postgres)."""
    found: dict[str, int] = {}
    for db in DATABASES:
        names = [name for name, (where, _) in COUNTS.items() if where == db]
        query = "SELECT " + ", ".join(f"({COUNTS[name][1]})" for name in names)
        values = sql(db, query).split("|")
        found.update({name: int(value) for name, value in zip(names, values, strict=True)})
    return {name: found[name] for name in COUNTS}


def ops(workdir: Path, *command: str) -> str:
    """Run a stack_ops command (`objects ...`, `kek ...`) in the `ops` service,
    with `workdir` at /work. As the invoking user, so the files it writes are
    ours to read and delete; the ops service's extra group 10001 lets it read
    the secrets it needs."""
    user = f"{os.getuid()}:{os.getgid()}"
    return compose(
        "run", "--rm", "--no-deps", "-T", "--user", user, "-v", f"{workdir}:/work", "ops", *command
    ).stdout  # fmt: skip


def mlflow_version() -> str:
    out = compose("exec", "-T", "mlflow-server", "python", "-c", "import mlflow; print(mlflow.__version__)")
    return out.stdout.strip()


def backup(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with tempfile.TemporaryDirectory(prefix="mlflow-backup-") as tmp:
        work = Path(tmp)
        for db in DATABASES:
            with (work / f"{db}.dump").open("wb") as f:
                compose(*pg(db, "pg_dump", "-Fc"), stdout=f)
            log(f"dumped database {db}")
        manifest = {"created": stamp, "mlflow_version": mlflow_version(), "counts": counts()}
        # The AI-gateway secrets in the dump stay encrypted: the archive holds
        # their count and the key's fingerprint, never the key.
        kek = last_json(ops(work, "kek", "status"))
        manifest["gateway_secrets"] = kek["readable"] + len(kek["unreadable"])
        manifest["kek_fingerprint"] = kek["fingerprint"]
        ops(work, "objects", "export", "/work")
        objects = json.loads((work / "objects.json").read_text())
        manifest["objects"] = len(objects)
        manifest["files"] = {str(p.relative_to(work)): sha256_file(p) for p in sorted(work.rglob("*")) if p.is_file()}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
        archive = out_dir / f"mlflow-backup-{stamp}.tar.gz"
        partial = archive.with_suffix(".partial")
        with tarfile.open(partial, "w:gz") as tar:
            for p in sorted(work.iterdir()):
                tar.add(p, arcname=p.name)
        partial.replace(archive)
    log(f"wrote {archive} ({archive.stat().st_size} bytes): {manifest['counts']}, {manifest['objects']} objects")
    if manifest["gateway_secrets"]:
        log(
            f"{manifest['gateway_secrets']} AI-gateway secret(s) stay encrypted under this stack's key: keep it apart "
            "from the archive (docker compose exec mlflow-server cat /run/secrets/kek_passphrase); a restore into "
            "another stack needs it (scripts/restore --kek-passphrase-file)"
        )
    return archive


def unpack_and_verify(archive: Path, work: Path) -> dict:
    """Extract the archive and check every file against the manifest, or raise."""
    if not archive.is_file():
        raise BackupError(f"{archive}: no such file")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(work, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise BackupError(f"{archive} is not a complete backup archive ({type(e).__name__}: {e})") from None
    try:
        manifest = json.loads((work / "manifest.json").read_text())
        files = manifest["files"]
        if not isinstance(manifest, dict) or not isinstance(files, dict):
            raise ValueError("not a manifest")
    except (OSError, ValueError, KeyError, TypeError):
        raise BackupError(f"{archive} has no readable manifest.json") from None
    for name, digest in files.items():
        path = work / name
        if not path.is_file() or sha256_file(path) != digest:
            raise BackupError(f"{archive}: {name} is missing or does not match the manifest")
    present = {str(p.relative_to(work)) for p in work.rglob("*") if p.is_file()} - {"manifest.json"}
    extra = sorted(present - set(files))
    if extra:
        raise BackupError(f"{archive}: {extra[0]} is not in the manifest")
    return manifest


def restore(archive: Path, force: bool, kek_file: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="mlflow-restore-") as tmp:
        work = Path(tmp)
        manifest = unpack_and_verify(archive, work)
        log(f"archive verified: {manifest['counts']}, {manifest['objects']} objects")
        log(f"made by MLflow {manifest['mlflow_version']}")

        # Preflight: the target must be empty unless told otherwise.
        current = counts()
        stored = last_json(ops(work, "objects", "list"))
        if not force and (current["runs"] or current["model_versions"] or stored):
            raise BackupError(
                f"the stack is not empty ({current['runs']} runs, {current['model_versions']} model versions, "
                f"{len(stored)} objects); restore into a fresh stack or pass --force to overwrite"
            )
        rewrap = gateway_key_preflight(manifest, work, kek_file)

        compose("stop", "trainer", "gc", "mlflow-server", "nginx")
        try:
            restore_into_stopped_stack(manifest, work, rewrap)
        finally:
            # Never leave the stack down, even when a step above failed.
            compose("up", "--detach", "--wait", "nginx", "gc", check=False)
        verify_restore(manifest, work)


def gateway_key_preflight(manifest: dict, work: Path, kek_file: Path | None) -> bool:
    """True if the restored AI-gateway secrets must be rewrapped under this
    stack's key. Refuses, before anything changes, when they would become
    unreadable: the backup's key is not this stack's and was not given."""
    count, source = manifest.get("gateway_secrets", 0), manifest.get("kek_fingerprint")
    if not count or source is None:
        return False
    here = last_json(ops(work, "kek", "status"))["fingerprint"]
    if here == source:
        return False
    if kek_file is None:
        raise BackupError(
            f"the backup holds {count} AI-gateway secret(s) encrypted under another stack's key (fingerprint "
            f"{source}); pass that stack's passphrase with --kek-passphrase-file FILE (on the old stack: docker "
            "compose exec mlflow-server cat /run/secrets/kek_passphrase). Nothing was changed"
        )
    from_gateway_keys = fingerprint_of(kek_file)
    if from_gateway_keys != source:
        raise BackupError(
            f"{kek_file} is not the key of this backup (fingerprint {from_gateway_keys}, the backup's {source}). "
            "Nothing was changed"
        )
    shutil.copyfile(kek_file, work / "old-kek-passphrase")
    return True


def fingerprint_of(kek_file: Path) -> str:
    """The fingerprint the server's code gives a passphrase (stack_ops/gateway_keys.py:
    plain Python, importable here without MLflow)."""
    sys.path.insert(0, str(ROOT / "mlflow-server"))
    from stack_ops.gateway_keys import fingerprint

    return fingerprint(kek_file.read_text().strip())


def restore_into_stopped_stack(manifest: dict, work: Path, rewrap: bool) -> None:
    for db, owner in DATABASES.items():
        with (work / f"{db}.dump").open("rb") as f:
            # As the superuser, objects are re-owned by the database's owner;
            # as that owner (external PostgreSQL), they are its own already.
            role = [f"--role={owner}"] if bundled_postgres() else []
            compose(
                    *pg(db, "pg_restore", "--clean", "--if-exists", "--no-owner", *role, "--single-transaction"),
                    stdin=f, stdout=subprocess.DEVNULL,
                )  # fmt: skip
        log(f"restored database {db}")
    if rewrap:
        moved = last_json(ops(work, "kek", "rewrap", "/work/old-kek-passphrase"))
        log(f"AI-gateway secrets: {moved['rewrapped']} rewrapped under this stack's key")
    ops(work, "objects", "import", "/work")
    # Logins restored as they were, except the stack's own accounts, which
    # follow this stack's secrets (the admin login stays what the README prints).
    compose("run", "--rm", "--no-deps", "accounts", "accounts", "--sync-admin")


def verify_restore(manifest: dict, work: Path) -> None:
    after = counts()
    if after != manifest["counts"]:
        raise BackupError(f"restored counts {after} differ from the manifest {manifest['counts']}")
    objects = last_json(ops(work, "objects", "list"))
    expected = json.loads((work / "objects.json").read_text())
    if any(objects.get(k) != v for k, v in expected.items()):
        raise BackupError("restored objects differ from the manifest")
    kek = last_json(ops(work, "kek", "status"))
    if kek["unreadable"]:
        raise BackupError(f"{len(kek['unreadable'])} AI-gateway secrets can't be decrypted here")
    log(f"restore verified: {after}, {len(expected)} objects, {kek['readable']} AI-gateway secrets readable")


def env_file_setting(env_file: Path, name: str) -> str | None:
    """The value `name` has in a .env file, or None."""
    if not env_file.is_file():
        return None
    value = None
    for line in env_file.read_text().splitlines():
        key, sep, rest = line.strip().partition("=")
        if sep and key == name:
            value = rest.strip().strip("'\"")
    return value


def set_env_file_setting(env_file: Path, name: str, value: str) -> bool:
    """Point every `name=` line of a .env file at `value`; True if the file had one."""
    if not env_file.is_file():
        return False
    lines, found = [], False
    for line in env_file.read_text().splitlines():
        key, sep, _ = line.strip().partition("=")
        if sep and key == name:
            line, found = f"{name}={value}", True
        lines.append(line)
    if found:
        env_file.write_text("\n".join(lines) + "\n")
    return found


def keep_parent(keep: Path) -> Path:
    keep.parent.mkdir(parents=True, exist_ok=True)
    return keep.parent


def migrate_store(target: str, keep: Path, env_file: Path) -> None:
    """Move every object of the stack's S3 store into a fresh `target` store.

    The copy on the host (`keep`) is taken with the server stopped and checked
    against each object's sha256 before the old store's volume is removed; the
    new store must then hold exactly those objects, by sha256, or nothing else
    happens and the copy stays where it is."""
    current = os.environ.get("S3_STORE") or env_file_setting(env_file, "S3_STORE") or "seaweedfs"
    listed = json.loads(ops(keep_parent(keep), "objects", "list", "--sizes").strip().splitlines()[-1])
    size = sum(o["size"] for o in listed.values())
    keep.mkdir(parents=True, exist_ok=True)
    if any(keep.iterdir()):
        raise BackupError(f"{keep} is not empty: give --keep an empty or new directory")
    free = shutil.disk_usage(keep).free
    if free < size * 1.1:
        raise BackupError(f"{keep} has {free} bytes free; the store holds {size}")
    log(f"moving {len(listed)} objects ({size} bytes) from {current} to {target}; copy kept in {keep}")

    compose("stop", "trainer", "gc", "mlflow-server", "nginx")
    switched = False
    try:
        ops(keep, "objects", "export", "/work")
        expected = json.loads((keep / "objects.json").read_text())
        for key, meta in expected.items():
            if sha256_file(keep / "objects" / key) != meta["sha256"]:
                raise BackupError(f"the copy of {key} in {keep} does not match the store: nothing was changed")
        log(f"copied and checked {len(expected)} objects")

        volume = STACK.volume("s3-data")
        compose("rm", "--stop", "--force", "s3")
        rm = subprocess.run(["docker", "volume", "rm", volume], capture_output=True, text=True)
        if rm.returncode != 0:
            raise BackupError(f"could not remove {volume}: {rm.stderr.strip()}")
        os.environ["S3_STORE"] = target
        switched = True
        # The bucket job in the foreground: `up --wait` on a one-shot service
        # fails when it has already exited (0) by the time compose looks.
        compose("up", "--detach", "--wait", "s3")
        compose("run", "--rm", "--no-deps", "bucket")
        ops(keep, "objects", "import", "/work")  # reads every object back and checks its sha256
        log(f"the {target} store holds all {len(expected)} objects, sha256 checked")
    except BackupError as e:
        where = f"; the stack now runs {target}" if switched else ""
        raise BackupError(f"{e}. The copy stays in {keep}{where}") from None
    finally:
        compose("up", "--detach", "--wait", "nginx", "gc", check=False)

    if set_env_file_setting(env_file, "S3_STORE", target):
        log(f"{env_file}: S3_STORE={target}")
    elif current != target:
        log(f"set S3_STORE={target} where you set S3_STORE={current}, or the next `up` refuses to start")
    log(f"done: the stack runs {target}. Delete {keep} once you have checked your artifacts")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup", help="write one timestamped archive")
    b.add_argument("--out", type=Path, default=Path(os.environ.get("BACKUP_DIR", ROOT / "backups")))
    r = sub.add_parser("restore", help="restore an archive into an empty stack and verify it")
    r.add_argument("archive", type=Path)
    r.add_argument("--force", action="store_true", help="overwrite a stack that already has data")
    r.add_argument(
        "--kek-passphrase-file",
        type=Path,
        help="the backed-up stack's AI-gateway key (its /run/secrets/kek_passphrase), if it isn't this stack's",
    )
    m = sub.add_parser("migrate-store", help="move every artifact to a fresh SeaweedFS store and switch to it")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    m.add_argument("--keep", type=Path, default=ROOT / "backups" / f"s3-objects-{stamp}", help="the copy, kept")
    m.add_argument("--env-file", type=Path, default=ROOT / ".env", help="the .env whose S3_STORE is switched")
    args = parser.parse_args(argv)
    if shutil.which("docker") is None:
        print("[backup] error: docker is not installed", file=sys.stderr)
        return 1
    try:
        if args.command == "backup":
            backup(args.out.resolve())
        elif args.command == "migrate-store":
            migrate_store("seaweedfs", args.keep.resolve(), args.env_file)
        else:
            restore(args.archive.resolve(), args.force, args.kek_passphrase_file)
    except BackupError as e:
        print(f"[backup] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
