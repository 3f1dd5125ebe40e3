"""Copy every object of the artifact bucket to or from a directory, with sha256s.

    objects export DIR   bucket -> DIR/objects/<key>, DIR/objects.json
    objects import DIR   DIR/objects/<key> -> bucket, each checked against objects.json
    objects list [PREFIX] [--sizes]   print key -> size, sha256 for the bucket (or keys
                                      under PREFIX); --sizes skips reading the objects

Used by scripts/backup, scripts/restore and scripts/migrate-store through the `ops` service.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from stack_ops.common import Settings, StackError, die, log

JOB = "objects"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_objects(s3, bucket: str, with_sha: bool = True, prefix: str = "") -> dict[str, dict]:
    found: dict[str, dict] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            entry = {"size": obj["Size"]}
            if with_sha:
                digest = hashlib.sha256()
                for chunk in s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].iter_chunks(1 << 20):
                    digest.update(chunk)
                entry["sha256"] = digest.hexdigest()
            found[obj["Key"]] = entry
    return found


def safe_path(root: Path, key: str) -> Path:
    path = (root / key).resolve()
    if not path.is_relative_to(root.resolve()):
        raise StackError(f"object key {key!r} escapes the backup directory")
    return path


def export(s3, bucket: str, target: Path) -> int:
    root = target / "objects"
    index: dict[str, dict] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            path = safe_path(root, obj["Key"])
            path.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(path))
            index[obj["Key"]] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    (target / "objects.json").write_text(json.dumps(index, indent=1, sort_keys=True))
    log(JOB, f"exported {len(index)} objects ({sum(v['size'] for v in index.values())} bytes) from {bucket}")
    return 0


def import_(s3, bucket: str, source: Path) -> int:
    root = source / "objects"
    index = json.loads((source / "objects.json").read_text())
    for key, meta in index.items():
        path = safe_path(root, key)
        if sha256_file(path) != meta["sha256"]:
            raise StackError(f"object {key} does not match its sha256 in the backup")
        s3.upload_file(str(path), bucket, key)
    stored = list_objects(s3, bucket)
    missing = [k for k, meta in index.items() if stored.get(k) != meta]
    if missing:
        raise StackError(f"{len(missing)} objects differ after import, e.g. {missing[0]}")
    log(JOB, f"imported and verified {len(index)} objects into {bucket}")
    return 0


def main(argv: list[str]) -> int:
    sizes_only = "--sizes" in argv
    argv = [a for a in argv if a != "--sizes"]
    if (
        not argv
        or argv[0] not in ("export", "import", "list")
        or len(argv) > 2
        or (argv[0] != "list" and (len(argv) != 2 or sizes_only))
    ):
        return die(JOB, "usage: objects export DIR | objects import DIR | objects list [PREFIX] [--sizes]")
    settings = Settings.from_env()
    try:
        s3 = settings.s3_client()
        if argv[0] == "list":
            prefix = argv[1] if len(argv) == 2 else ""
            found = list_objects(s3, settings.bucket, with_sha=not sizes_only, prefix=prefix)
            print(json.dumps(found, sort_keys=True))
            return 0
        if argv[0] == "export":
            return export(s3, settings.bucket, Path(argv[1]))
        return import_(s3, settings.bucket, Path(argv[1]))
    except StackError as e:
        return die(JOB, str(e))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
