"""commands/objects.py: bucket <-> folder copies with sha256s, against a dict-backed S3."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from stack_ops.commands import objects
from stack_ops.common import StackError


class Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def iter_chunks(self, size: int):
        for i in range(0, len(self.data), size):
            yield self.data[i : i + size]


class Paginator:
    def __init__(self, s3: FakeS3) -> None:
        self.s3 = s3

    def paginate(self, Bucket: str, Prefix: str = ""):
        keys = sorted(k for k in self.s3.buckets[Bucket] if k.startswith(Prefix))
        for i in range(0, max(len(keys), 1), self.s3.page_size):
            page = keys[i : i + self.s3.page_size]
            yield {"Contents": [{"Key": k, "Size": len(self.s3.buckets[Bucket][k])} for k in page]} if page else {}


class FakeS3:
    """The five calls objects.py makes, on {bucket: {key: bytes}}; pages of 2 keys, as S3 pages of 1000."""

    page_size = 2

    def __init__(self, buckets: dict[str, dict[str, bytes]]) -> None:
        self.buckets = buckets

    def get_paginator(self, name: str) -> Paginator:
        assert name == "list_objects_v2"
        return Paginator(self)

    def get_object(self, Bucket: str, Key: str) -> dict:
        return {"Body": Body(self.buckets[Bucket][Key])}

    def download_file(self, bucket: str, key: str, filename: str) -> None:
        Path(filename).write_bytes(self.buckets[bucket][key])

    def upload_file(self, filename: str, bucket: str, key: str) -> None:
        self.buckets[bucket][key] = Path(filename).read_bytes()


OBJECTS = {
    "1/0123abcd/artifacts/model/model.pkl": os.urandom(3 * 1024 * 1024 + 7),  # several 1 MiB chunks
    "1/0123abcd/artifacts/metrics.csv": b"step,loss\n0,0.5\n",
    "1/models/m-1/artifacts/MLmodel": b"flavors: {}\n",
    "empty.txt": b"",
    "dir with spaces/ü.txt": "ünïcode".encode(),
}


# --- safe_path -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["a.txt", "1/abc/artifacts/model.pkl", "dir with spaces/ü.txt", "a/./b", "a/../b"])
def test_safe_path_keeps_normal_keys_inside_the_root(tmp_path: Path, key: str) -> None:
    path = objects.safe_path(tmp_path, key)
    assert path == (tmp_path / key).resolve()
    assert path.is_relative_to(tmp_path.resolve()) and path != tmp_path.resolve()


@pytest.mark.parametrize("key", ["../outside", "a/../../outside", "/etc/passwd", "//etc/passwd", "a/../../../etc"])
def test_safe_path_refuses_keys_that_escape(tmp_path: Path, key: str) -> None:
    with pytest.raises(StackError, match=r"^object key .* escapes the backup directory$"):
        objects.safe_path(tmp_path / "objects", key)


@pytest.mark.parametrize("key", ["..\\outside", "..\\..\\etc\\passwd", "a\\..\\..\\b"])
def test_backslashes_are_plain_characters_on_posix(tmp_path: Path, key: str) -> None:
    # Not a separator here: the key stays one file name directly inside the root.
    assert objects.safe_path(tmp_path, key).parent == tmp_path.resolve()


def test_safe_path_refuses_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    root.mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(StackError, match="escapes the backup directory"):
        objects.safe_path(root, "link/file.txt")


# --- export and import ---------------------------------------------------------------------------


def test_export_then_import_round_trips_every_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = FakeS3({"mlflow": dict(OBJECTS)})
    assert objects.export(source, "mlflow", tmp_path) == 0
    index = json.loads((tmp_path / "objects.json").read_text())
    assert index == {
        key: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for key, data in OBJECTS.items()
    }
    assert (tmp_path / "objects" / "1/0123abcd/artifacts/model/model.pkl").read_bytes() == OBJECTS[
        "1/0123abcd/artifacts/model/model.pkl"
    ]
    assert f"exported {len(OBJECTS)} objects ({sum(map(len, OBJECTS.values()))} bytes) from mlflow" in (
        capsys.readouterr().out
    )

    target = FakeS3({"mlflow": {}})
    assert objects.import_(target, "mlflow", tmp_path) == 0
    assert target.buckets["mlflow"] == OBJECTS
    assert f"imported and verified {len(OBJECTS)} objects into mlflow" in capsys.readouterr().out


def test_list_objects_with_sha256_and_prefix() -> None:
    s3 = FakeS3({"mlflow": dict(OBJECTS)})
    listed = objects.list_objects(s3, "mlflow", prefix="1/0123abcd/")
    assert listed == {
        key: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for key, data in OBJECTS.items()
        if key.startswith("1/0123abcd/")
    }
    assert objects.list_objects(s3, "mlflow", with_sha=False)["empty.txt"] == {"size": 0}


def test_import_refuses_a_tampered_file_before_uploading_it(tmp_path: Path) -> None:
    objects.export(FakeS3({"mlflow": dict(OBJECTS)}), "mlflow", tmp_path)
    (tmp_path / "objects" / "1/0123abcd/artifacts/metrics.csv").write_bytes(b"step,loss\n0,0.1\n")
    target = FakeS3({"mlflow": {}})
    with pytest.raises(StackError, match=r"^object 1/0123abcd/artifacts/metrics.csv does not match its sha256"):
        objects.import_(target, "mlflow", tmp_path)
    assert "1/0123abcd/artifacts/metrics.csv" not in target.buckets["mlflow"]


def test_import_refuses_an_index_key_that_escapes(tmp_path: Path) -> None:
    (tmp_path / "objects").mkdir()
    (tmp_path / "objects.json").write_text(json.dumps({"../../etc/cron.d/x": {"size": 0, "sha256": "0" * 64}}))
    with pytest.raises(StackError, match="escapes the backup directory"):
        objects.import_(FakeS3({"mlflow": {}}), "mlflow", tmp_path)


class CorruptingS3(FakeS3):
    def upload_file(self, filename: str, bucket: str, key: str) -> None:
        self.buckets[bucket][key] = Path(filename).read_bytes() + b"!"


def test_import_verifies_what_the_store_holds_afterwards(tmp_path: Path) -> None:
    objects.export(FakeS3({"mlflow": dict(OBJECTS)}), "mlflow", tmp_path)
    with pytest.raises(StackError, match=rf"^{len(OBJECTS)} objects differ after import, e.g. "):
        objects.import_(CorruptingS3({"mlflow": {}}), "mlflow", tmp_path)


def test_export_refuses_a_bucket_key_that_escapes(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="escapes the backup directory"):
        objects.export(FakeS3({"mlflow": {"../../outside.txt": b"x"}}), "mlflow", tmp_path / "backup")
    assert not (tmp_path / "outside.txt").exists()
