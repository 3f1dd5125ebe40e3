"""Policy scan: checkov over the manifests of every scenario. A failed check
passes only when deploy/helm/checkov-skips.yaml accepts it, with a reason."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from chart import HELM_DIR, Rendered, write

SKIPS_FILE = HELM_DIR / "checkov-skips.yaml"


def checkov_binary() -> str:
    found = os.environ.get("CHECKOV") or shutil.which("checkov")
    if not found:
        pytest.fail("checkov not found: run through deploy/helm/check (it installs it), or set CHECKOV")
    return found


def skips() -> list[dict]:
    entries = yaml.safe_load(SKIPS_FILE.read_text())["skips"]
    for entry in entries:
        assert entry.get("reason", "").strip(), f"{entry['id']}: a skip needs a reason"
    return entries


def resource_key(resource: str) -> str:
    """checkov's `Kind.namespace.name` as `Kind.name`."""
    kind, _namespace, name = resource.split(".", 2)
    return f"{kind}.{name}"


@pytest.fixture(scope="module")
def findings(renders: dict[str, Rendered], tmp_path_factory: pytest.TempPathFactory) -> dict:
    out: Path = tmp_path_factory.mktemp("rendered")
    for name, rendered in renders.items():
        write(rendered, out / name)
    proc = subprocess.run(
        [checkov_binary(), "-d", str(out), "--framework", "kubernetes", "-o", "json", "--quiet", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    return report


def test_checkov_scanned_every_object(findings: dict, renders: dict[str, Rendered]) -> None:
    summary = findings["summary"]
    print(f"checkov {summary['checkov_version']}: {summary}")
    assert summary["parsing_errors"] == 0
    # checkov counts each object, plus the pod template of most workloads.
    assert summary["resource_count"] >= sum(len(r.objects) for r in renders.values())
    assert summary["passed"] > 1000


def test_no_failed_check_without_an_accepted_reason(findings: dict) -> None:
    accepted = skips()
    used: set[str] = set()
    unaccepted = []
    for failed in findings["results"]["failed_checks"]:
        key = resource_key(failed["resource"])
        scenario = Path(failed["file_path"]).parts[-2]
        match = [
            s
            for s in accepted
            if s["id"] == failed["check_id"] and any(fnmatch.fnmatch(key, p) for p in s["resources"])
        ]
        if match:
            used.add(failed["check_id"])
        else:
            unaccepted.append(f"{failed['check_id']} ({failed['check_name']}) on {key} [{scenario}]")
    print(f"failed checks: {len(findings['results']['failed_checks'])}, all accepted: {not unaccepted}")
    assert not unaccepted, "fix these or accept them in checkov-skips.yaml:\n" + "\n".join(sorted(set(unaccepted)))
    stale = [s["id"] for s in accepted if s["id"] not in used]
    assert not stale, f"checkov-skips.yaml lists checks that no longer fail: {stale}"
