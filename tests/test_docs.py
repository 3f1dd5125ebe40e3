"""The docs can't rot: every command they show is run somewhere, the
troubleshooting transcripts and the README's snippet are replayed against the
live stack, and docs/configuration.md lists every compose variable.

A command is a line of a ```sh, ```bash or ```console block (console: the
lines after `$ `) in README.md or docs/*.md. Each must be, in this order:

1. replayed here: every `console` command (its shown output must appear in
   what it prints now), and the read-only `sh` commands in READ_ONLY;
2. run by a script or CI: it appears, as written, on a line of scripts/* or
   .ci/run;
3. run by a test in argv form: listed in ELSEWHERE with the file and the
   code that runs it, which must still be there.

Anything else fails the test, by name.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from stack import ROOT, Stack, unique

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"sh", "bash", "console"}
# Read-only commands safe to run on any stack: replayed here (rc 0, some output).
READ_ONLY = (
    ("docker", "compose", "ps"),
    ("docker", "compose", "logs"),
    ("docker", "compose", "exec", "mlflow-server", "cat", "/run/secrets/"),
)
# Documented commands that a test runs in argv form: (file, the code that runs it).
ELSEWHERE = {
    "docker compose up -d --wait": ("scripts/stack.py", '"up", "--detach", "--wait"'),
    "docker compose up -d --wait nginx": (
        "tests/test_backup.py",
        '"up", "--detach", "--wait", "--wait-timeout", "300", "nginx"',
    ),
    "docker compose down -v": ("tests/test_backup.py", 'other.compose("down", "--volumes"'),
    "export COMPOSE_PROJECT_NAME=drill HTTP_PORT=8081": (
        "scripts/stack.py",
        'env = {"COMPOSE_PROJECT_NAME": self.project}',
    ),
    "scripts/backup": ("tests/test_backup.py", 'stack.script("backup"'),
    "scripts/backup --out /tmp/drill": ("tests/test_backup.py", 'stack.script("backup", "--out"'),
    "scripts/restore backups/mlflow-backup-20261127T235959Z.tar.gz": (
        "tests/test_backup.py",
        'target.script("restore", str(archive))',
    ),
    "scripts/restore /tmp/drill/mlflow-backup-*.tar.gz": (
        "tests/test_backup.py",
        'target.script("restore", str(archive))',
    ),
    "docker compose exec gc /opt/stack/entrypoint.sh gc --once --older-than 7d": (
        "tests/test_gc.py",
        '"exec", "-T", "gc", "/opt/stack/entrypoint.sh", "gc", "--once", "--older-than"',
    ),
    "scripts/migrate-store": ("tests/test_store.py", 's.script("migrate-store"'),
    "docker compose exec -T mlflow-server cat /run/secrets/kek_passphrase > old-kek": (
        "tests/test_backup.py",
        'key_file.write_text(stack.secret("kek_passphrase"))',
    ),
    "scripts/restore backups/mlflow-backup-20261127T235959Z.tar.gz --kek-passphrase-file old-kek": (
        "tests/test_backup.py",
        '"restore", str(archive), "--kek-passphrase-file", str(key_file)',
    ),
    "scripts/backup --out backups/pg-upgrade": ("tests/test_backup.py", 's.script("backup", "--out"'),
    "docker compose down": ("tests/test_backup.py", 's.compose("down")'),
    "docker volume rm mlflow-stack_postgres-data": (
        "tests/test_backup.py",
        '["docker", "volume", "rm", f"{s.project}_postgres-data"]',
    ),
    "scripts/restore backups/pg-upgrade/mlflow-backup-*.tar.gz --force": (
        "tests/test_backup.py",
        's.script("restore", str(archive), "--force")',
    ),
    "scripts/users add alice": ("tests/test_security.py", 'users(stack, "add", name)'),
    "scripts/users add carol --admin": ("tests/test_security.py", 'users(stack, "add", boss, "--admin")'),
    "scripts/users reset-password alice": ("tests/test_security.py", 'users(stack, "reset-password", name)'),
    "scripts/users reset-admin-password": ("tests/test_security.py", 'users(stack, "reset-admin-password")'),
    "scripts/users list": ("tests/test_security.py", 'users(stack, "list")'),
    "scripts/users workspace-grant alice team-a USE": (
        "tests/test_workspaces.py",
        'users(ws, "workspace-grant", account[0], workspace, "USE")',
    ),
    "scripts/users workspace-revoke alice team-a": (
        "tests/test_workspaces.py",
        'users(ws, "workspace-revoke", account[0], workspace)',
    ),
    "export MLFLOW_WORKSPACE=team-a": ("tests/test_workspaces.py", 'monkeypatch.setenv("MLFLOW_WORKSPACE", workspace)'),
    "scripts/users unlock 203.0.113.7": ("tests/test_security.py", 'users(stack, "unlock", result["address"])'),
    "docker compose -f compose.yaml -f compose.tls.yaml up -d --wait": (
        "tests/test_tls.py",
        '"COMPOSE_FILE": f"{base[\'COMPOSE_FILE\']}:{TLS_FILE}"',
    ),
    "docker compose -f compose.yaml -f compose.tls.yaml exec -T nginx cat /etc/nginx/tls-public/ca.crt"
    " > mlflow-ca.crt": (
        "tests/test_tls.py",
        'variant.compose("exec", "-T", "nginx", "cat", "/etc/nginx/tls-public/ca.crt")',
    ),
    "docker compose up -d --wait --no-deps --force-recreate tls nginx": (
        "tests/test_tls.py",
        '"up", "--detach", "--wait", "--wait-timeout", "300", "--no-deps", "--force-recreate", "tls", "nginx"',
    ),
    "export MLFLOW_TRACKING_URI=https://mlflow.example.internal:8443": (
        "tests/test_tls.py",
        'monkeypatch.setenv("MLFLOW_TRACKING_URI", tls.url)',
    ),
    "export MLFLOW_TRACKING_SERVER_CERT_PATH=/path/to/mlflow-ca.crt": (
        "tests/test_tls.py",
        'monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(tls.ca))',
    ),
    "docker compose -f compose.yaml -f compose.monitoring.yaml up -d --wait": (
        "tests/test_metrics.py",
        'COMPOSE_FILE=f"{files}:{MONITORING_FILE}"',
    ),
    "docker compose -f compose.yaml -f compose.monitoring.yaml exec prometheus wget -qO-"
    " http://127.0.0.1:9090/api/v1/query?query=up": (
        "tests/test_metrics.py",
        'stack.compose("exec", "-T", "prometheus", "wget", "-qO-", url)',
    ),
    "docker network create mlflow-egress": ("tests/test_external.py", 'docker("network", "create", m.network)'),
    "docker compose -f compose.yaml -f compose.external.yaml up -d --wait": (
        "tests/test_external.py",
        '"COMPOSE_FILE": f"{files}:compose.external.yaml"',
    ),
    # The README's exports: test_readme_snippet_logs_a_run sets exactly these.
    "export MLFLOW_TRACKING_URI=http://mlflow.example.internal:8080": ("tests/test_docs.py", "def test_readme_snippet"),
    "export MLFLOW_TRACKING_USERNAME=alice": ("tests/test_docs.py", "def test_readme_snippet"),
    "export MLFLOW_TRACKING_PASSWORD=the-generated-password": ("tests/test_docs.py", "def test_readme_snippet"),
}


@dataclass
class Command:
    doc: str  # where it is documented, e.g. docs/operations.md:42
    text: str  # normalized: shell words joined by single spaces, no comment
    console: bool
    raw: str = ""  # as written (console commands are replayed as written)
    output: list[str] = field(default_factory=list)


def blocks(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, language, lines) of every fenced block."""
    found, lang, start, body = [], None, 0, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip() or "text", n, []
            else:
                found.append((start, lang, body))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{path}: unclosed code block at line {start}"
    return found


def normalize(line: str) -> list[str]:
    """Shell words, comment dropped, split at `&&` / `;` into commands."""
    words = shlex.split(line, comments=True)
    commands, current = [], []
    for w in words:
        if w in ("&&", ";"):
            commands.append(current)
            current = []
        else:
            current.append(w)
    return [" ".join(c) for c in [*commands, current] if c]


def documented_commands() -> list[Command]:
    commands = []
    for path in DOCS:
        rel = path.relative_to(ROOT)
        for start, lang, body in blocks(path):
            if lang not in SHELL:
                continue
            for i, line in enumerate(body):
                where = f"{rel}:{start + 1 + i}"
                if lang == "console":
                    if line.startswith("$ "):
                        out = []
                        for following in body[i + 1 :]:
                            if following.startswith("$ "):
                                break
                            if following.strip():
                                out.append(following.strip())
                        commands.append(Command(where, " ".join(shlex.split(line[2:])), True, line[2:], out))
                elif line.strip() and not line.lstrip().startswith("#"):
                    assert not line.rstrip().endswith("\\"), f"{where}: keep documented commands on one line"
                    commands += [Command(where, text, False) for text in normalize(line)]
    return commands


def run_by_scripts(text: str) -> bool:
    files = [p for p in (ROOT / "scripts").iterdir() if p.is_file()] + [ROOT / ".ci" / "run"]
    for f in files:
        for line in f.read_text().splitlines():
            code = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
            if re.search(rf"(^|[\s;&|(]){re.escape(text)}($|[\s;&|)])", code):
                return True
    return False


def read_only(text: str) -> bool:
    words = text.split()
    for prefix in READ_ONLY:
        n = len(prefix)
        if tuple(words[: n - 1]) == prefix[:-1] and words[n - 1 : n] and words[n - 1].startswith(prefix[-1]):
            if "-f" not in words and "--follow" not in words:
                return True
    return False


def test_there_are_commands_to_check() -> None:
    commands = documented_commands()
    assert len([c for c in commands if c.console]) >= 4
    assert len(commands) >= 20, [c.text for c in commands]


def test_every_documented_command_is_exercised() -> None:
    missing = []
    for c in documented_commands():
        if c.console or read_only(c.text) or run_by_scripts(c.text):
            continue
        if c.text in ELSEWHERE:
            rel, code = ELSEWHERE[c.text]
            if code in (ROOT / rel).read_text():
                continue
            missing.append(f"{c.doc}: {c.text}  ({rel} no longer contains {code!r})")
        else:
            missing.append(f"{c.doc}: {c.text}")
    assert not missing, "documented commands no test, script or CI runs:\n" + "\n".join(missing)


def test_elsewhere_lists_only_documented_commands() -> None:
    documented = {c.text for c in documented_commands()}
    assert not set(ELSEWHERE) - documented, "stale ELSEWHERE entries"


@pytest.fixture(scope="module")
def teammate(stack: Stack, http: requests.Session) -> tuple[str, str]:
    """A fresh non-admin account, created by the admin as the docs say."""
    user, password = unique("docs").replace("-", "_"), unique("pw") + unique("x")
    r = http.post(f"{stack.url}/api/2.0/mlflow/users/create", json={"username": user, "password": password})
    r.raise_for_status()
    return user, password


def shell(stack: Stack, command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run a documented command against this stack: its project, its port."""
    command = command.replace("docker compose ", f"docker compose --project-name {stack.project} ")
    command = command.replace("http://localhost:8080", stack.url)
    return subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=ROOT,
        env={**os.environ, **stack.env, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_console_transcripts_replay(stack: Stack, teammate: tuple[str, str]) -> None:
    env = {"MLFLOW_TRACKING_USERNAME": teammate[0], "MLFLOW_TRACKING_PASSWORD": teammate[1]}
    wrong = []
    for c in [c for c in documented_commands() if c.console]:
        proc = shell(stack, c.raw, env)
        got = proc.stdout + proc.stderr
        for line in c.output:
            if line not in got:
                wrong.append(f"{c.doc}: {c.text}\n  shown: {line}\n  now:   {got.strip()[:500]}")
    assert not wrong, "transcripts that no longer match:\n" + "\n".join(wrong)


def test_read_only_commands_work(stack: Stack, admin: tuple[str, str]) -> None:
    ran = 0
    for c in [c for c in documented_commands() if not c.console and read_only(c.text)]:
        proc = shell(stack, c.text, {})
        assert proc.returncode == 0 and proc.stdout.strip(), f"{c.doc}: {c.text}\n{proc.stdout}\n{proc.stderr}"
        if "mlflow_admin_password" in c.text:
            assert proc.stdout.strip() == admin[1], "the documented command does not print the admin password"
        ran += 1
    assert ran >= 3


def test_readme_snippet_logs_a_run(stack: Stack, teammate: tuple[str, str], http: requests.Session, tmp_path) -> None:
    """The README's exports and Python snippet, run as a teammate would."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Connect your training code") :]
    exports = dict(re.findall(r"^export (MLFLOW_TRACKING_\w+)=(\S+)$", section, re.M))
    assert set(exports) == {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}, exports
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    values = {"MLFLOW_TRACKING_URI": stack.url, "MLFLOW_TRACKING_USERNAME": teammate[0]}
    values["MLFLOW_TRACKING_PASSWORD"] = teammate[1]
    (tmp_path / "confusion_matrix.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    experiment = unique("churn")
    snippet = snippet.replace('mlflow.set_experiment("churn")', f'mlflow.set_experiment("{experiment}")')
    assert experiment in snippet, "the snippet no longer sets the experiment the test expects"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    proc = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=tmp_path,
        env={**env, **{name: values[name] for name in exports}},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    r = http.get(f"{stack.url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": experiment})
    exp_id = r.json()["experiment"]["experiment_id"]
    runs = http.post(f"{stack.url}/api/2.0/mlflow/runs/search", json={"experiment_ids": [exp_id]}).json()["runs"]
    assert len(runs) == 1 and runs[0]["info"]["user_id"] == teammate[0]
    assert {m["key"]: m["value"] for m in runs[0]["data"]["metrics"]} == {"auc_roc": 0.87}
    run_id = runs[0]["info"]["run_id"]
    art = http.get(f"{stack.url}/get-artifact", params={"path": "confusion_matrix.png", "run_uuid": run_id})
    assert art.status_code == 200 and art.content == (tmp_path / "confusion_matrix.png").read_bytes()


def interpolations(text: str) -> list[tuple[str, str | None]]:
    """(NAME, default or None) of every ${NAME}, ${NAME:-default}, ${NAME-default}
    in compose text, nested ones included (a default may hold another ${...})."""
    found = []
    for start in [m.start() for m in re.finditer(r"\$\{", text)]:
        depth, i = 0, start
        while i < len(text):
            if text.startswith("${", i):
                depth, i = depth + 1, i + 2
                continue
            if text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)(?::?-(.*))?", text[start + 2 : i], re.S)
        if m:
            found.append((m.group(1), m.group(2)))
    return found


def compose_variables() -> dict[str, str | None]:
    """Every ${VAR} the compose files (and the stores' store.yaml) read, with
    its default in compose.yaml if it has one there (None: no default)."""
    found: dict[str, str | None] = {}
    files = [ROOT / "compose.yaml", *sorted(ROOT.glob("compose.*.yaml")), *sorted(ROOT.glob("*/store.yaml"))]
    for f in files:
        for name, default in interpolations(f.read_text()):
            found.setdefault(name, default)
    return found


def test_configuration_documents_every_variable() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    rows = {m[0]: m[1] for m in re.findall(r"^\| `([A-Z_][A-Z0-9_]*)` \| ([^|]*) \|", doc, re.M)}
    example = set(re.findall(r"^# ([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    variables = compose_variables()
    assert len(variables) >= 20, variables
    missing = sorted((set(variables) | example) - set(rows))
    assert not missing, f"docs/configuration.md has no row for: {missing}"
    wrong = {v: (d, rows[v]) for v, d in variables.items() if d and f"`{d}`" not in rows[v]}
    assert not wrong, f"defaults in docs/configuration.md differ from the compose files: {wrong}"
    # A commented example is the default: uncommenting it changes nothing.
    values = dict(re.findall(r"^# ([A-Z_][A-Z0-9_]*)=(.*)$", (ROOT / ".env.example").read_text(), re.M))
    stale = {v: (values[v], d) for v, d in variables.items() if d and "${" not in d and v in values and values[v] != d}
    assert not stale, f".env.example's commented values differ from the compose defaults: {stale}"


def compose_model() -> dict:
    """`docker compose config` of the stack with every profile switched on."""
    proc = subprocess.run(
        ["docker", "compose", "--profile", "ops", "--profile", "tls", "config", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def test_architecture_draws_every_service_volume_and_network() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    drawing = doc.split("## The whole stack", 1)[1].split("```", 2)[1]
    table = {m for m in re.findall(r"^\| `([a-z0-9-]+)`", doc.split("## Services", 1)[1], re.M)}
    model = compose_model()
    services, volumes, networks = set(model["services"]), set(model["volumes"]), set(model["networks"])
    assert {"tls", "ops", "users", "s3"} <= services  # profiles included
    missing = {
        "drawn services": sorted(s for s in services if not re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", drawing)),
        "drawn volumes": sorted(v for v in volumes if f"{v}" not in drawing),
        "drawn networks": sorted(n for n in networks if f"network {n}" not in drawing),
        "services in the table": sorted(services - table),
        "table rows that compose no longer defines": sorted(table - services),
    }
    assert not any(missing.values()), missing
