"""scripts/stack_backup.py: a restore starts only from an archive that matches its manifest."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import stack_backup
from stack_backup import BackupError, unpack_and_verify

FILES = {
    "mlflow.dump": b"PGDMP tracking",
    "mlflow_auth.dump": b"PGDMP auth",
    "objects.json": b"{}",
    "objects/1/abc/artifacts/model.pkl": b"\x80\x04model",
    "objects/1/abc/artifacts/metrics.csv": b"step,loss\n",
}


def make_archive(
    folder: Path,
    files: dict[str, bytes] = FILES,
    *,
    listed: dict[str, bytes] | None = None,
    manifest: bytes | None = None,
) -> Path:
    """An archive as backup() writes it: the files, and manifest.json with the sha256
    of `listed` (default: the files themselves)."""
    listed = files if listed is None else listed
    if manifest is None:
        manifest = json.dumps(
            {
                "created": "20261204T120000Z",
                "mlflow_version": "3.17.2",
                "counts": {"runs": 1},
                "objects": 2,
                "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(listed.items())},
            }
        ).encode()
    archive = folder / "mlflow-backup-20261204T120000Z.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in {**files, "manifest.json": manifest}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def test_a_good_archive_is_unpacked_and_returns_its_manifest(tmp_path: Path, work: Path) -> None:
    manifest = unpack_and_verify(make_archive(tmp_path), work)
    assert manifest["mlflow_version"] == "3.17.2" and set(manifest["files"]) == set(FILES)
    assert {str(p.relative_to(work)): p.read_bytes() for p in work.rglob("*") if p.is_file()} == {
        **FILES,
        "manifest.json": (work / "manifest.json").read_bytes(),
    }


def test_a_tampered_file_is_named(tmp_path: Path, work: Path) -> None:
    tampered = {**FILES, "objects/1/abc/artifacts/model.pkl": b"\x80\x04MODEL"}
    archive = make_archive(tmp_path, tampered, listed=FILES)
    with pytest.raises(BackupError) as caught:
        unpack_and_verify(archive, work)
    assert (
        str(caught.value) == f"{archive}: objects/1/abc/artifacts/model.pkl is missing or does not match the manifest"
    )


def test_a_missing_file_is_named(tmp_path: Path, work: Path) -> None:
    partial = {k: v for k, v in FILES.items() if k != "mlflow_auth.dump"}
    archive = make_archive(tmp_path, partial, listed=FILES)
    with pytest.raises(BackupError, match=r": mlflow_auth\.dump is missing or does not match the manifest$"):
        unpack_and_verify(archive, work)


def test_an_extra_file_is_named(tmp_path: Path, work: Path) -> None:
    extra = {**FILES, "objects/1/abc/artifacts/planted.sh": b"#!/bin/sh\n"}
    archive = make_archive(tmp_path, extra, listed=FILES)
    with pytest.raises(BackupError, match=r"objects/1/abc/artifacts/planted\.sh"):
        unpack_and_verify(archive, work)


@pytest.mark.parametrize("manifest", [b"not json", b'{"created": "x"}'], ids=["garbage", "no-files"])
def test_an_unreadable_manifest_is_refused(tmp_path: Path, work: Path, manifest: bytes) -> None:
    archive = make_archive(tmp_path, manifest=manifest)
    with pytest.raises(BackupError, match=r"has no readable manifest\.json$"):
        unpack_and_verify(archive, work)


@pytest.mark.parametrize("manifest", [b"[]", b'{"files": ["mlflow.dump"]}'], ids=["list", "files-list"])
def test_a_manifest_of_the_wrong_shape_is_refused(tmp_path: Path, work: Path, manifest: bytes) -> None:
    archive = make_archive(tmp_path, manifest=manifest)
    with pytest.raises(BackupError, match=r"has no readable manifest\.json$"):
        unpack_and_verify(archive, work)


def test_an_archive_without_manifest_is_refused(tmp_path: Path, work: Path) -> None:
    archive = tmp_path / "no-manifest.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(make_archive(tmp_path), arcname="nested.tar.gz")
    with pytest.raises(BackupError, match=r"has no readable manifest\.json$"):
        unpack_and_verify(archive, work)


def test_a_truncated_archive_is_refused(tmp_path: Path, work: Path) -> None:
    archive = make_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[:-40])
    with pytest.raises(BackupError, match=r"is not a complete backup archive \("):
        unpack_and_verify(archive, work)


def test_an_absent_archive_is_named(tmp_path: Path, work: Path) -> None:
    with pytest.raises(BackupError, match=r"nothing\.tar\.gz: no such file$"):
        unpack_and_verify(tmp_path / "nothing.tar.gz", work)


def test_members_outside_the_folder_are_refused_and_not_written(tmp_path: Path, work: Path) -> None:
    archive = make_archive(tmp_path, {**FILES, "../escaped.txt": b"x"})
    with pytest.raises(BackupError, match="is not a complete backup archive"):
        unpack_and_verify(archive, work)
    assert not (tmp_path / "escaped.txt").exists()


def test_restore_main_reports_a_bad_archive_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stack_backup.shutil, "which", lambda name: "/usr/bin/docker")
    monkeypatch.setattr(stack_backup, "compose", lambda *a, **k: pytest.fail("docker compose must not run"))
    archive = make_archive(tmp_path, {**FILES, "mlflow.dump": b"changed"}, listed=FILES)
    assert stack_backup.main(["restore", str(archive)]) == 1
    assert capsys.readouterr().err == (
        f"[backup] error: {archive}: mlflow.dump is missing or does not match the manifest\n"
    )
