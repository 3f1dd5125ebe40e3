"""The `ui` job: MLflow's UI bundle copied into the volume nginx serves."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import pytest

from stack_ops.jobs import ui

BIG_JS = b"function f(){return 1};\n" * 400  # compressible, over 1 KiB
PNG = bytes(range(256)) * 8  # not a text format: never compressed


def make_bundle(root: Path, extra: bytes = b"") -> Path:
    build = root / "build"
    files = {
        "index.html": b"<html>" + b"x" * 2000 + b"</html>",
        "favicon.ico": b"\0\1" * 10,  # under 1 KiB: not compressed
        "static/js/main.abc.js": BIG_JS + extra,
        "static/css/main.abc.css": b"body{color:red}\n" * 200,
        "static/media/logo.png": PNG,
    }
    for rel, data in files.items():
        (build / rel).parent.mkdir(parents=True, exist_ok=True)
        (build / rel).write_bytes(data)
    return build


def served(root: Path, rel: str) -> Path:
    return root / "current" / ui.URL_DIR / rel


def test_every_file_is_published_byte_for_byte_with_a_gzip_copy_of_the_text_ones(tmp_path):
    build = make_bundle(tmp_path)
    root = tmp_path / "volume"
    root.mkdir()

    key, written, removed = ui.publish("3.17.2", build, root)

    assert written and removed == []
    assert os.readlink(root / "current") == key and key.startswith("3.17.2-")
    for rel in ui.bundle_files(build):
        rel = rel.as_posix()
        assert served(root, rel).read_bytes() == (build / rel).read_bytes(), rel
    for rel in ("index.html", "static/js/main.abc.js", "static/css/main.abc.css"):
        gz = served(root, rel + ".gz")
        assert gzip.decompress(gz.read_bytes()) == (build / rel).read_bytes(), rel
        assert gz.stat().st_size < served(root, rel).stat().st_size
    assert not served(root, "favicon.ico.gz").exists()  # too small to be worth it
    assert not served(root, "static/media/logo.png.gz").exists()  # not text


def test_nginx_another_user_can_read_everything(tmp_path):
    build = make_bundle(tmp_path)
    root = tmp_path / "volume"
    root.mkdir()
    ui.publish("3.17.2", build, root)
    for path in (root / "current").resolve().rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), path


def test_the_same_bundle_is_not_copied_again(tmp_path):
    build = make_bundle(tmp_path)
    root = tmp_path / "volume"
    root.mkdir()
    key, _, _ = ui.publish("3.17.2", build, root)
    main_js = served(root, "static/js/main.abc.js")
    before = main_js.stat().st_mtime_ns
    os.utime(main_js, ns=(1, 1))  # a rewrite would reset it

    again, written, removed = ui.publish("3.17.2", build, root)

    assert (again, written, removed) == (key, False, [])
    assert main_js.stat().st_mtime_ns == 1 != before


def test_a_new_bundle_replaces_current_keeps_the_one_before_and_drops_older_ones(tmp_path):
    root = tmp_path / "volume"
    root.mkdir()
    first, _, _ = ui.publish("3.17.2", make_bundle(tmp_path / "a"), root)
    # Same version string, other bytes (a rebuilt image): a new key.
    second, written, removed = ui.publish("3.17.2", make_bundle(tmp_path / "b", extra=b"//2"), root)
    assert written and second != first and removed == []
    assert os.readlink(root / "current") == second
    assert (root / first / ui.URL_DIR / "index.html").is_file()  # pages opened before the upgrade

    third, _, removed = ui.publish("3.18.0", make_bundle(tmp_path / "c", extra=b"//3"), root)

    assert removed == [first]
    assert sorted(p.name for p in root.iterdir()) == sorted(["current", second, third])
    assert served(root, "static/js/main.abc.js").read_bytes().endswith(b"//3")


def test_an_unfinished_copy_and_leftover_temporary_folders_are_replaced(tmp_path):
    build = make_bundle(tmp_path)
    root = tmp_path / "volume"
    root.mkdir()
    key = ui.bundle_key("3.17.2", build, ui.bundle_files(build))
    (root / key / ui.URL_DIR).mkdir(parents=True)  # killed mid-copy: no .complete
    (root / key / ui.URL_DIR / "index.html").write_bytes(b"half")
    (root / f".{key}.999").mkdir()
    (root / ".current.999").symlink_to(key)

    got, written, removed = ui.publish("3.17.2", build, root)

    assert got == key and written
    assert served(root, "index.html").read_bytes() == (build / "index.html").read_bytes()
    assert sorted(removed) == sorted([".current.999", f".{key}.999"])
    assert sorted(p.name for p in root.iterdir()) == sorted(["current", key])


def test_a_bundle_holding_a_symbolic_link_is_refused_before_anything_is_written(tmp_path):
    build = make_bundle(tmp_path)
    (build / "static" / "leak").symlink_to("/etc/passwd")
    root = tmp_path / "volume"
    root.mkdir()
    with pytest.raises(ValueError, match="symbolic link"):
        ui.publish("3.17.2", build, root)
    assert list(root.iterdir()) == []


def test_the_key_follows_the_bytes_and_the_version(tmp_path):
    build = make_bundle(tmp_path)
    files = ui.bundle_files(build)
    key = ui.bundle_key("3.17.2", build, files)
    assert key == ui.bundle_key("3.17.2", build, files)
    assert ui.bundle_key("3.17.3", build, files) != key
    (build / "index.html").write_bytes(b"<html>changed</html>")
    assert ui.bundle_key("3.17.2", build, files) != key
    assert ui.bundle_key("3.17/../x", build, files).startswith("3.17_.._x-")  # never a path


def test_the_job_publishes_the_installed_mlflow_s_own_bundle(tmp_path, monkeypatch, capsys):
    version, build = ui.mlflow_bundle()
    assert (build / "index.html").is_file() and list(build.glob("static/js/main.*.js"))
    monkeypatch.setattr(ui, "UI_TARGET", tmp_path)

    assert ui.main() == 0

    assert f"MLflow {version}'s UI bundle published" in capsys.readouterr().out
    main_js = next(build.glob("static/js/main.*.js"))
    copy = served(tmp_path, main_js.relative_to(build).as_posix())
    assert gzip.decompress(copy.with_name(copy.name + ".gz").read_bytes()) == main_js.read_bytes()
    assert len(list((tmp_path / "current" / ui.URL_DIR).rglob("*"))) > len(list(build.rglob("*")))

    assert ui.main() == 0
    assert "already published" in capsys.readouterr().out


def test_the_job_fails_with_one_line_when_the_volume_is_not_mounted(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ui, "UI_TARGET", tmp_path / "missing")
    assert ui.main() == 1
    assert "is not a folder (compose.yaml mounts the mlflow-ui volume there)" in capsys.readouterr().err
