"""Drive one copy of the stack with `docker compose` (a project of its own)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
LONG_RUNNING = ("postgres", "mlflow-server", "nginx", "gc")
ONE_SHOT = ("secrets", "bucket", "migrate", "accounts")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix: str) -> str:
    """A name no other test (or earlier run) uses."""
    return f"{prefix}-{secrets.token_hex(4)}"


@dataclass
class Stack:
    project: str
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(
        self, cmd: list[str], env: dict[str, str], check: bool, timeout: float, input: str | None = None
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env={**os.environ, **self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def compose(
        self, *args: str, check: bool = True, timeout: float = 600, input: str | None = None
    ) -> subprocess.CompletedProcess:
        return self._run(["docker", "compose", "--project-name", self.project, *args], {}, check, timeout, input)

    def script(self, name: str, *args: str, check: bool = False, timeout: float = 900) -> subprocess.CompletedProcess:
        """An operator's command, exactly as documented: scripts/NAME ARGS, aimed at this stack."""
        env = {"COMPOSE_PROJECT_NAME": self.project}
        return self._run([str(ROOT / "scripts" / name), *args], env, check, timeout)

    def up(self) -> None:
        self.compose("up", "--detach", "--wait", "--wait-timeout", "300")

    def services(self) -> list[str]:
        return self.compose("config", "--services").stdout.split()

    s3_service = "s3"  # the store's service, whichever store S3_STORE picks

    @property
    def s3_store(self) -> str:
        """`seaweedfs` or `minio`: the store S3_STORE picks for this stack."""
        return self.env.get("S3_STORE") or os.environ.get("S3_STORE") or "seaweedfs"

    def secret(self, name: str) -> str:
        return self.compose("exec", "-T", "mlflow-server", "cat", f"/run/secrets/{name}").stdout.strip()

    def python_in(self, service: str, code: str) -> str:
        """Run Python inside a running service of the stack (its network, its env)."""
        return self.compose("exec", "-T", service, "python", "-c", code).stdout

    def bucket_objects(self, prefix: str) -> dict:
        """Objects (size, sha256) straight from the S3 store, from inside the stack's network."""
        out = self.compose("exec", "-T", "mlflow-server", "/opt/stack/entrypoint.sh", "objects", "list", prefix).stdout
        return {"objects": json.loads(out.strip().splitlines()[-1])}

    def containers(self) -> list[dict]:
        out = self.compose("ps", "--all", "--format", "json").stdout.strip()
        if not out:
            return []
        if out.startswith("["):
            return json.loads(out)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_exited(self, service: str, timeout: float = 900) -> int:
        """Poll until the one-shot `service` has exited; return its exit code."""
        deadline = time.monotonic() + timeout
        state = "not created"
        while time.monotonic() < deadline:
            found = [c for c in self.containers() if c["Service"] == service]
            if found:
                state = found[0]["State"]
                if state == "exited":
                    return int(found[0]["ExitCode"])
            time.sleep(2)
        raise TimeoutError(f"{service} still {state} after {timeout:.0f}s")

    def wait_http_ok(self, path: str = "/health", timeout: float = 120) -> None:
        """Poll the front door until `path` answers 200, or fail saying what we waited for."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                r = requests.get(self.url + path, timeout=5)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except requests.RequestException as e:
                last = str(e)
            time.sleep(1)
        raise TimeoutError(f"{self.url}{path} not OK after {timeout:.0f}s (last: {last})")

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--timestamps", check=False).stdout
