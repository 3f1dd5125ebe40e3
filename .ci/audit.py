"""Audit the pinned Python dependencies of every image for known vulnerabilities.

For each image the stack builds (MLFLOW_SERVER_IMAGE, TRAINER_IMAGE, as
compose.yaml names them) it takes the exact installed set from inside the
image (`pip freeze --all` with the image's venv python), drops the local
project packages that are not on PyPI (`name @ file://...`), and audits the
rest with pip-audit against PyPI's vulnerability data (`-s pypi`, which reads
the `vulnerabilities` field of PyPI's per-release JSON API). The direct pins
of the test client (tests/requirements.txt) are audited too.

Accepted findings live in .ci/pip-audit-accepted.toml, one [[accepted]] entry
per vulnerability id with package, reason and date. Any other finding fails
the run; an accepted entry that matches no finding is reported so the list
doesn't rot. (The script classifies pip-audit's full JSON report itself
instead of passing --ignore-vuln, so that it can tell which accepted entries
still match.)

Where PyPI's per-release JSON is not served (a package-index-only mirror
serves /pypi/NAME/json but not /pypi/NAME/VERSION/json), pip-audit reports the
package as "not found on PyPI". The script then falls back to the project
JSON, whose `vulnerabilities` field describes the latest release: exact for a
pin that is the latest release, no data for an older one. Packages left
without data are listed as NOT AUDITED: a warning by default, a failure with
AUDIT_UNAUDITED=fail; a run that could audit nothing at all fails.

Usage: .ci/audit [--requirements FILE ...]   (extra pinned files to audit)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCEPTED_FILE = Path(os.environ.get("AUDIT_ACCEPTED", ROOT / ".ci" / "pip-audit-accepted.toml"))
PIP_AUDIT = os.environ.get("PIP_AUDIT", "/opt/ci-tools/bin/pip-audit")
PYPI = os.environ.get("AUDIT_PYPI_URL", "https://pypi.org/pypi")

# (label, image variable, default as in compose.yaml, venv if the image says none)
IMAGES = [
    ("mlflow-server", "MLFLOW_SERVER_IMAGE", "mlflow-stack/mlflow-server:0.1.0", "/opt/mlflow"),
    ("trainer", "TRAINER_IMAGE", "mlflow-stack/trainer:0.1.0", "/opt/trainer"),
]

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#]+)")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Vuln:
    id: str
    aliases: list[str]
    fix_versions: list[str]
    summary: str


@dataclass
class Dep:
    name: str
    version: str
    sets: list[str] = field(default_factory=list)
    vulns: list[Vuln] = field(default_factory=list)
    source: str = ""  # how it was audited, or why not ("" = not yet)
    audited: bool = False


def freeze_image(label: str, image: str, venv: str) -> tuple[list[str], list[str]]:
    """Return (pinned 'name==version' lines, local packages) installed in image."""
    try:
        env = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{json .Config.Env}}", image],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except subprocess.CalledProcessError as e:
        sys.exit(f"[audit] image {image} ({label}) not found: build it first\n{e.stderr}")
    for item in json.loads(env) or []:
        if item.startswith("VIRTUAL_ENV="):
            venv = item.split("=", 1)[1]
    out = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", f"{venv}/bin/python"]
        + ["-e", "PIP_DISABLE_PIP_VERSION_CHECK=1", image, "-m", "pip", "freeze", "--all"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        sys.exit(f"[audit] pip freeze in {image} failed:\n{out.stderr}")
    pins, local = [], []
    for line in out.stdout.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if PIN.match(line):
            pins.append(line)
        else:  # `name @ file:///app`, `-e ...`: a local project, not on PyPI
            local.append(line)
    return pins, local


def read_pins(path: Path) -> list[str]:
    pins = []
    for line in path.read_text().splitlines():
        m = PIN.match(line.strip())
        if m:
            pins.append(f"{m.group(1)}=={m.group(2)}")
    return pins


def run_pip_audit(pins: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp, "requirements.txt")
        req.write_text("\n".join(pins) + "\n")
        report = Path(tmp, "report.json")
        cmd = [PIP_AUDIT, "-r", str(req), "--no-deps", "--disable-pip", "-s", "pypi"]
        cmd += ["-f", "json", "--aliases", "on", "--desc", "on", "-o", str(report)]
        cmd += ["--progress-spinner", "off"]
        # Exit 1 just means "vulnerabilities found": the report tells.
        res = subprocess.run(cmd, capture_output=True, text=True)
        if not report.exists():
            sys.exit(f"[audit] pip-audit failed (exit {res.returncode}):\n{res.stderr}")
        return json.loads(report.read_text())


def latest_release_vulns(dep: Dep) -> None:
    """Fallback: the project JSON's `vulnerabilities` (those of the latest release)."""
    url = f"{PYPI}/{dep.name}/json"
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            data = json.load(r)
    except (urllib.error.URLError, TimeoutError, ValueError) as e:
        dep.source = f"no data ({url}: {e})"
        return
    latest = data.get("info", {}).get("version", "?")
    if latest != dep.version:
        dep.source = f"per-release data unavailable; latest is {latest}"
        return
    dep.audited = True
    dep.source = "PyPI project JSON (pin is the latest release)"
    for v in data.get("vulnerabilities") or []:
        if v.get("withdrawn"):
            continue
        dep.vulns.append(Vuln(v["id"], v.get("aliases") or [], v.get("fixed_in") or [], v.get("summary") or ""))


def run_pip_audit_batches(pins: list[str]) -> dict:
    """pip-audit refuses a requirements file that names a package twice, and two
    images may hold two versions of one package (an indirect dependency built
    at different times): one run per batch in which every name is unique."""
    batches: list[dict[str, str]] = []
    for pin in pins:
        name = norm(pin.split("==", 1)[0])
        batch = next((b for b in batches if name not in b), None)
        if batch is None:
            batch = {}
            batches.append(batch)
        batch[name] = pin
    dependencies: list[dict] = []
    for batch in batches:
        dependencies += run_pip_audit(list(batch.values())).get("dependencies", [])
    return {"dependencies": dependencies}


def load_accepted() -> list[dict]:
    if not ACCEPTED_FILE.exists():
        return []
    entries = tomllib.loads(ACCEPTED_FILE.read_text()).get("accepted", [])
    for e in entries:
        missing = [k for k in ("id", "package", "reason", "date") if not e.get(k)]
        if missing:
            sys.exit(f"[audit] {ACCEPTED_FILE.name}: entry {e!r} lacks {', '.join(missing)}")
    return entries


def table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths]] + rows:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requirements", action="append", default=[], type=Path)
    ap.add_argument("--no-images", action="store_true", help="audit only the files")
    args = ap.parse_args()

    sets: dict[str, list[str]] = {}
    if not args.no_images:
        for label, var, default, venv in IMAGES:
            image = os.environ.get(var) or default
            pins, local = freeze_image(label, image, venv)
            sets[f"{label} ({image})"] = pins
            print(f"[audit] {image}: {len(pins)} packages", end="")
            print(f"; local, not audited: {', '.join(local)}" if local else "")
        sets["tests/requirements.txt (direct pins)"] = read_pins(ROOT / "tests/requirements.txt")
    for f in args.requirements:
        sets[str(f)] = read_pins(f)

    deps: dict[tuple[str, str], Dep] = {}
    for set_name, pins in sets.items():
        for pin in pins:
            name, version = pin.split("==", 1)
            key = (norm(name), version)
            deps.setdefault(key, Dep(norm(name), version)).sets.append(set_name.split(" ")[0])

    all_pins = [f"{d.name}=={d.version}" for d in deps.values()]
    print(f"[audit] pip-audit -s pypi on {len(all_pins)} distinct name==version pins")
    report = run_pip_audit_batches(all_pins)
    for d in report.get("dependencies", []):
        dep = deps.get((norm(d["name"]), d.get("version", "")))
        if dep is None:  # skipped entries carry no version: find by name
            dep = next((x for x in deps.values() if x.name == norm(d["name"])), None)
        if dep is None or dep.audited:
            continue
        if "skip_reason" in d:
            dep.source = d["skip_reason"]
            continue
        dep.audited, dep.source = True, "pip-audit -s pypi"
        dep.vulns = [
            Vuln(v["id"], v.get("aliases", []), v.get("fix_versions", []), v.get("description", ""))
            for v in d.get("vulns", [])
        ]
    skipped = [d for d in deps.values() if not d.audited]
    if skipped:
        print(f"[audit] pip-audit could not audit {len(skipped)} pins (first: {skipped[0].source})")
        print("[audit] falling back to PyPI's project JSON (vulnerabilities of the latest release)")
        for dep in skipped:
            latest_release_vulns(dep)

    accepted = load_accepted()
    used: set[int] = set()
    findings, new = [], 0
    for dep in sorted(deps.values(), key=lambda d: (d.name, d.version)):
        seen: set[str] = set()
        for v in dep.vulns:
            ids = {v.id, *v.aliases}
            if ids & seen:  # the same vulnerability under another id (PYSEC/GHSA)
                continue
            seen |= ids
            match = next(
                (i for i, e in enumerate(accepted) if e["id"] in ids and norm(e["package"]) == dep.name),
                None,
            )
            if match is None:
                new += 1
                status = "NEW"
            else:
                used.add(match)
                status = "accepted"
            findings.append(
                [
                    status,
                    dep.name,
                    dep.version,
                    v.id,
                    ",".join(sorted(a for a in v.aliases if a != v.id)) or "-",
                    ",".join(v.fix_versions) or "none",
                    ",".join(sorted(set(dep.sets))),
                ]
            )

    audited = [d for d in deps.values() if d.audited]
    unaudited = [d for d in deps.values() if not d.audited]
    print()
    if findings:
        print(f"[audit] known vulnerabilities ({new} new, {len(findings) - new} accepted):")
        table(findings, ["status", "package", "version", "id", "aliases", "fixed in", "where"])
        for i, e in enumerate(accepted):
            if i in used:
                print(f"  accepted {e['id']} ({e['package']}, {e['date']}): {e['reason']}")
    else:
        print(f"[audit] no known vulnerabilities in the {len(audited)} audited pins")
    unaudited_names = {d.name for d in deps.values() if not d.audited}
    unmatched = [e for i, e in enumerate(accepted) if i not in used]
    for e in unmatched:
        if norm(e["package"]) in unaudited_names:
            print(f"[audit] accepted {e['id']} ({e['package']}): not checked, package not audited")
    stale = [e for e in unmatched if norm(e["package"]) not in unaudited_names]
    for e in stale:
        print(
            f"[audit] WARNING: accepted {e['id']} ({e['package']}) matches no finding any more:"
            f" remove it from {ACCEPTED_FILE}"
        )
    policy = os.environ.get("AUDIT_UNAUDITED", "warn")
    if unaudited:
        print()
        print(
            f"[audit] {'ERROR' if policy == 'fail' else 'WARNING'}: NOT AUDITED, no vulnerability"
            f" data reachable for {len(unaudited)} of {len(deps)} pins:"
        )
        rows = [
            [d.name, d.version, d.source, ",".join(sorted(set(d.sets)))]
            for d in sorted(unaudited, key=lambda d: d.name)
        ]
        table(rows, ["package", "version", "why", "where"])
    print()
    print(
        f"[audit] {len(audited)} of {len(deps)} pins audited, {new} new finding(s),"
        f" {len(findings) - new} accepted, {len(stale)} stale acceptance(s),"
        f" {len(unaudited)} not audited (AUDIT_UNAUDITED={policy})"
    )
    if new:
        print(
            "[audit] FAIL: upgrade the pin (or constrain the transitive dependency), or, if it"
            f" does not apply, accept it in {ACCEPTED_FILE} with a reason"
        )
        return 1
    if not audited:
        print("[audit] FAIL: nothing could be audited (is PyPI reachable?)")
        return 1
    if unaudited and policy == "fail":
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
