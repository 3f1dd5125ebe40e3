"""Publish MLflow's UI bundle into the `mlflow-ui` volume, for nginx to serve.

MLflow serves its UI's static files itself: a cold page load asks for ~45
of them (4.4 MB of JavaScript for the main bundle alone), each through
uvicorn and Flask, and nginx gzipped each one again for every browser. In
the benchmark's browser, the stack's bundle arrived ~0.4 s later than the
plain server's (docs/performance.md, "The UI"). This job copies the bundle of
the MLflow installed in this image into the volume once, with a gzip copy of
every compressible file beside it, so that nginx sends them from disk
(`gzip_static`), after the same login check as before (nginx/locations.conf).

Layout of the volume (mounted at UI_TARGET):

    <key>/static-files/<path>       MLflow's js/build/<path>, as its
                                    /static-files/<path> route serves it
    <key>/static-files/<path>.gz    the gzip copy, when it is smaller
    current -> <key>                what nginx serves (a symlink)

<key> is MLflow's version and a digest of the bundle's bytes. A bundle
already published is not copied again (a restart costs a digest); a new one
is written under a temporary name and renamed whole, then `current` is
swapped by a rename, so nginx never sees half a bundle. The bundle `current`
pointed to before is kept, for pages a browser opened before an upgrade;
older ones are removed. A file nginx does not find still comes from MLflow.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import sys
from pathlib import Path

from stack_ops.common import die, log

JOB = "ui"
UI_TARGET = Path(os.environ.get("STACK_UI_TARGET", "/ui"))
CURRENT = "current"
URL_DIR = "static-files"  # MLflow's route prefix for the bundle
DONE = ".complete"
# What nginx's gzip_static may send compressed: text formats. Images, fonts
# and the like are compressed already.
COMPRESSIBLE = frozenset({".js", ".mjs", ".css", ".html", ".json", ".map", ".svg", ".txt", ".xml", ".ico", ".ttf"})
MIN_COMPRESS_BYTES = 1024  # nginx's own gzip_min_length (nginx/nginx.conf)


def mlflow_bundle() -> tuple[str, Path]:
    """The installed MLflow's version and its UI build folder, found without
    importing MLflow (seconds on a busy host)."""
    spec = importlib.util.find_spec("mlflow")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("MLflow is not installed in this image")
    build = Path(spec.origin).parent / "server" / "js" / "build"
    if not (build / "index.html").is_file():
        raise FileNotFoundError(f"{build} holds no UI bundle (no index.html)")
    return importlib.metadata.version("mlflow"), build


def bundle_files(build: Path) -> list[Path]:
    """Every regular file of the bundle, relative to it, in a stable order.
    Symbolic links are refused: nginx would follow them out of the volume."""
    files = []
    for path in sorted(build.rglob("*")):
        if path.is_symlink():
            raise ValueError(f"{path} is a symbolic link; the bundle must hold plain files")
        if path.is_file():
            files.append(path.relative_to(build))
    return files


def bundle_key(version: str, build: Path, files: list[Path]) -> str:
    """MLflow's version and the first 16 hex digits of a digest of every
    file's path and bytes: a rebuilt bundle gets a new key even if the
    version string did not change."""
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.as_posix().encode() + b"\0")
        digest.update(hashlib.sha256((build / rel).read_bytes()).digest())
    safe_version = "".join(c if c.isalnum() or c in ".-_" else "_" for c in version)
    return f"{safe_version}-{digest.hexdigest()[:16]}"


def compress(path: Path) -> bool:
    """Write `path`.gz beside it when that is worth sending; True if written."""
    if path.suffix.lower() not in COMPRESSIBLE or path.stat().st_size < MIN_COMPRESS_BYTES:
        return False
    raw = path.read_bytes()
    # mtime=0: the same bundle always gives the same bytes.
    packed = gzip.compress(raw, compresslevel=9, mtime=0)
    if len(packed) >= len(raw):
        return False
    gz = path.with_name(path.name + ".gz")
    gz.write_bytes(packed)
    gz.chmod(0o644)
    return True


def write_bundle(build: Path, files: list[Path], into: Path) -> int:
    """Copy the bundle under into/static-files/, world-readable (nginx runs
    as another user), with gzip copies; returns how many were compressed."""
    compressed = 0
    for rel in files:
        target = into / URL_DIR / rel
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.copyfile(build / rel, target)
        target.chmod(0o644)
        compressed += compress(target)
    for directory in [into, *(p for p in into.rglob("*") if p.is_dir())]:
        directory.chmod(0o755)
    (into / DONE).write_text("")
    return compressed


def current_key(root: Path) -> str | None:
    link = root / CURRENT
    return os.readlink(link) if link.is_symlink() else None


def point_current(root: Path, key: str) -> None:
    """Swap `current` to `key` in one rename: nginx resolves it per request."""
    tmp = root / f".{CURRENT}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(key)
    os.replace(tmp, root / CURRENT)


def prune(root: Path, keep: set[str]) -> list[str]:
    """Remove every bundle and leftover temporary folder but `keep`."""
    removed = []
    for entry in sorted(root.iterdir()):
        if entry.name == CURRENT or entry.name in keep:
            continue
        if entry.is_symlink() or entry.is_file():
            entry.unlink()
        else:
            shutil.rmtree(entry)
        removed.append(entry.name)
    return removed


def publish(version: str, build: Path, root: Path) -> tuple[str, bool, list[str]]:
    """Make `root/current` serve this bundle. Returns its key, whether it was
    written now (False: already there), and what was removed."""
    files = bundle_files(build)
    key = bundle_key(version, build, files)
    before = current_key(root)
    written = False
    if not (root / key / DONE).is_file():
        tmp = root / f".{key}.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o755)
        write_bundle(build, files, tmp)
        shutil.rmtree(root / key, ignore_errors=True)  # an earlier, unfinished copy
        os.replace(tmp, root / key)
        written = True
    if before != key:
        point_current(root, key)
    keep = {key}
    if before and (root / before / DONE).is_file():
        keep.add(before)  # for pages opened before this bundle
    return key, written, prune(root, keep)


def main() -> int:
    try:
        version, build = mlflow_bundle()
        if not UI_TARGET.is_dir():
            return die(JOB, f"{UI_TARGET} is not a folder (compose.yaml mounts the mlflow-ui volume there)")
        key, written, removed = publish(version, build, UI_TARGET)
    except (OSError, ValueError) as e:
        return die(JOB, str(e))
    log(JOB, f"MLflow {version}'s UI bundle {'published' if written else 'already published'} as {key}")
    if removed:
        log(JOB, f"removed older bundle(s): {', '.join(removed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
