"""jobs/secrets.py: which values are refused, what is generated, how it is written."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from stack_ops.jobs import secrets as job

STRONG = "Zq7-long-enough-and-strong"


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The secrets volume, empty, with no override in the environment."""
    monkeypatch.setattr(job, "TARGET", tmp_path)
    for spec in job.SPECS:
        monkeypatch.delenv(spec.env, raising=False)
    return tmp_path


def stored(target: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(target.iterdir())}


@pytest.mark.parametrize("value", ["admin", "ADMIN", "Password", "MLflow", "POSTGRES", "sEcReT", "mlflow"])
def test_well_known_defaults_are_refused_in_any_case(value: str) -> None:
    assert job.weakness(value) == "is a well-known default"


def test_a_well_known_default_is_refused_even_when_long_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    # The digest check comes first and lower-cases: a 16-character default in
    # capitals is still refused as a default, not accepted for its length.
    default = "vendor-default-1"
    digest = hashlib.sha256(default.encode()).hexdigest()
    monkeypatch.setattr(job, "KNOWN_DEFAULT_DIGESTS", job.KNOWN_DEFAULT_DIGESTS | {digest})
    assert job.weakness(default.upper()) == "is a well-known default"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a" * 11, "is shorter than 12 characters"),
        ("Zq7-long enough", "contains whitespace"),
        ("Zq7-long-enough\t", "contains whitespace"),
        ("a" * 12, None),
        (STRONG, None),
    ],
)
def test_weakness_length_and_whitespace(value: str, problem: str | None) -> None:
    assert job.weakness(value) == problem


@pytest.mark.parametrize("spec", job.SPECS, ids=lambda s: s.name)
def test_generate_uses_the_spec_length_and_alphabet(spec: job.Spec) -> None:
    values = {job.generate(spec) for _ in range(3)}
    assert len(values) == 3  # random, not a constant
    for value in values:
        assert len(value) == spec.length
        assert set(value) <= set(spec.alphabet)
        assert job.weakness(value) is None


def test_write_is_read_only_and_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "postgres_password"
    job.write(path, "first-value-xyz")
    first_inode = path.stat().st_ino
    with path.open() as old:  # a reader holding the old file
        job.write(path, "second-value-xyz")
        assert old.read() == "first-value-xyz\n"  # untouched: a new file took its name
    assert path.read_text() == "second-value-xyz\n"
    assert path.stat().st_ino != first_inode
    assert stat.S_IMODE(path.stat().st_mode) == 0o440
    assert [p.name for p in tmp_path.iterdir()] == ["postgres_password"]  # no temporary file left


def test_main_generates_every_missing_secret(target: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert job.main() == 0
    files = stored(target)
    assert sorted(files) == sorted(s.name for s in job.SPECS)
    for spec in job.SPECS:
        value = files[spec.name].removesuffix("\n")
        assert len(value) == spec.length and set(value) <= set(spec.alphabet), spec.name
        assert stat.S_IMODE((target / spec.name).stat().st_mode) == 0o440
    assert f"secrets ready in the secrets volume ({len(job.SPECS)} files)" in capsys.readouterr().out


def test_main_keeps_existing_secrets(target: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert job.main() == 0
    before = stored(target)
    capsys.readouterr()
    assert job.main() == 0
    assert stored(target) == before
    assert "generated" not in capsys.readouterr().out


def test_main_override_from_the_environment_wins(
    target: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert job.main() == 0
    before = stored(target)
    monkeypatch.setenv("POSTGRES_PASSWORD", f"  {STRONG}  ")  # .env values may carry spaces around
    assert job.main() == 0
    after = stored(target)
    assert after["postgres_password"] == STRONG + "\n"
    assert {k: v for k, v in after.items() if k != "postgres_password"} == {
        k: v for k, v in before.items() if k != "postgres_password"
    }
    assert "postgres_password: set from POSTGRES_PASSWORD" in capsys.readouterr().out


def test_main_refuses_a_weak_override_and_writes_nothing(
    target: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A strong override for the first secret, a weak one for the last: the
    # preflight refuses before even the strong one is written.
    monkeypatch.setenv("POSTGRES_PASSWORD", STRONG)
    monkeypatch.setenv("MLFLOW_TRAINER_PASSWORD", "Password")
    assert job.main() == 1
    assert list(target.iterdir()) == []
    err = capsys.readouterr().err
    assert "[secrets] error: MLFLOW_TRAINER_PASSWORD is a well-known default; set a strong value in .env" in err


def test_main_refuses_a_missing_volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(job, "TARGET", tmp_path / "absent")
    assert job.main() == 1
    assert "absent is not a directory: mount the secrets volume there" in capsys.readouterr().err
    assert not (tmp_path / "absent").exists()


def test_a_webhook_key_must_be_a_fernet_key() -> None:
    spec = next(s for s in job.SPECS if s.fernet)
    assert job.format_problem(spec, job.generate(spec)) is None
    for bad in ("long-enough-but-not-a-fernet-key", "A" * 44, job.generate(spec)[:-4]):
        assert "is not a Fernet key" in (job.format_problem(spec, bad) or ""), bad
    text_spec = next(s for s in job.SPECS if not s.fernet)
    assert job.format_problem(text_spec, "anything at all") is None
