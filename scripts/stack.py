"""Drive one copy of the stack with `docker compose`: the one way the tests,
the benchmark and the operator scripts (backup, restore, migrate-store) do it.

Standard library only, so every one of them can import it: the test suite
(tests/conftest.py puts this folder on sys.path), bench/bench.py and
scripts/stack_backup.py.

    Stack(project="mlflowtest1a2b3c", port=8123, env={...})   a copy of its own
    Stack.current()                  the operator's stack (COMPOSE_PROJECT_NAME, or compose.yaml's name)
    stack.sibling("mlflowrestore")   a second, fresh copy beside it (same images and settings)
    with sibling.session("nginx") as s: ...   up for a block, then down with its volumes
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LONG_RUNNING = ("postgres", "mlflow-server", "nginx", "gc")
ONE_SHOT = ("secrets", "bucket", "migrate", "accounts", "ui")


class ComposeError(RuntimeError):
    """A `docker compose` command failed; the message has its output's tail."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix: str) -> str:
    """A name no other test (or earlier run) uses."""
    return f"{prefix}-{secrets.token_hex(4)}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wait_for(what: str, probe, timeout: float = 120, every: float = 2):
    """Call `probe` until it returns something truthy, and return that; an
    AssertionError naming `what` (and the last answer) after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def new_account(url: str, http, prefix: str) -> tuple[str, str]:
    """A new non-admin account (default permissions only), created through
    `http`, a requests session signed in as the admin: (name, password)."""
    name, password = unique(prefix), secrets.token_urlsafe(18)
    r = http.post(f"{url}/api/2.0/mlflow/users/create", json={"username": name, "password": password}, timeout=30)
    assert r.status_code == 200, r.text
    return name, password


def last_json(out: str):
    """The JSON document on the last line of a command's output."""
    return json.loads(out.strip().splitlines()[-1])


SIGN_IN_PROBE = """
import json, socket, sys, requests
user, password, n = json.loads(sys.argv[1])
url = "http://nginx:8080/api/2.0/mlflow/experiments/search?max_results=1"
codes = [requests.get(url, auth=(user, password), timeout=30).status_code for _ in range(n)]
print(json.dumps({"codes": codes, "address": socket.gethostbyname(socket.gethostname())}))
"""


@dataclass
class Stack:
    project: str | None  # None: the operator's stack (COMPOSE_PROJECT_NAME or compose.yaml's `name`)
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def current(cls) -> Stack:
        """The stack an operator's command acts on: their environment decides."""
        return cls(project=None)

    @classmethod
    def attach(cls, project: str) -> Stack:
        """A stack that is already up, by its compose project name, on the
        port its nginx publishes."""
        probe = cls(project=project, port=0)
        port = int(probe.compose("port", "nginx", "8080").stdout.strip().rsplit(":", 1)[1])
        return cls(project=project, port=port)

    def sibling(self, prefix: str, **env: str) -> Stack:
        """A second copy beside this one: same settings (images, variables), its
        own project name, port and volumes. `env` overrides settings for it."""
        other = Stack(project=unique(prefix).replace("-", ""), port=free_port(), env={**self.env, **env})
        other.env["HTTP_PORT"] = str(other.port)
        return other

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(
        self,
        cmd: list[str],
        env: dict[str, str],
        check: bool,
        timeout: float | None,
        input: str | None = None,
        stdin=None,
        stdout=None,
    ) -> subprocess.CompletedProcess:
        binary = stdin is not None or stdout is not None
        proc = subprocess.run(
            cmd,
            cwd=ROOT,
            env={**os.environ, **self.env, **env},
            input=input,
            stdin=stdin,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=not binary,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
            out = proc.stdout if isinstance(proc.stdout, str) else ""
            raise ComposeError(f"{' '.join(cmd[:8])} failed ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
        return proc

    def compose(
        self,
        *args: str,
        check: bool = True,
        timeout: float | None = 600,
        input: str | None = None,
        stdin=None,
        stdout=None,
    ) -> subprocess.CompletedProcess:
        """`docker compose ARGS` for this stack. Text in and out, or binary
        streams with `stdin=`/`stdout=` (a dump piped to a file)."""
        project = ["--project-name", self.project] if self.project else []
        return self._run(["docker", "compose", *project, *args], {}, check, timeout, input, stdin, stdout)

    def script(self, name: str, *args: str, check: bool = False, timeout: float = 900) -> subprocess.CompletedProcess:
        """An operator's command, exactly as documented: scripts/NAME ARGS, aimed at this stack."""
        env = {"COMPOSE_PROJECT_NAME": self.project} if self.project else {}
        return self._run([str(ROOT / "scripts" / name), *args], env, check, timeout)

    def up(self, *services: str, timeout: float = 300) -> float:
        """`up --detach --wait` (the whole stack, or these services and what
        they need); returns the seconds it took."""
        t0 = time.monotonic()
        self.compose("up", "--detach", "--wait", "--wait-timeout", str(int(timeout)), *services, timeout=timeout + 300)
        return round(time.monotonic() - t0, 1)

    def down(self) -> None:
        """Remove the copy and its volumes (profiles included)."""
        self.compose("--profile", "ops", "--profile", "bench", "down", "--volumes", "--remove-orphans", check=False)

    @contextlib.contextmanager
    def session(self, *services: str, timeout: float = 300) -> Iterator[Stack]:
        """`up` these services (and what they need), yield this stack, and
        `down` it with its volumes however the block ends: a test's sibling,
        `with stack.sibling("mlflowx").session("nginx") as s: ...`."""
        try:
            try:
                self.up(*services, timeout=timeout)
            except Exception:
                print(self.compose("ps", "--all", check=False).stdout + self.logs())  # why, before `down`
                raise
            yield self
        finally:
            self.down()

    def services(self) -> list[str]:
        return self.compose("config", "--services").stdout.split()

    s3_service = "s3"  # the store's service, whichever store S3_STORE picks

    @property
    def s3_store(self) -> str:
        """`seaweedfs` or `minio`: the store S3_STORE picks for this stack."""
        return self.env.get("S3_STORE") or os.environ.get("S3_STORE") or "seaweedfs"

    def volume(self, name: str) -> str:
        """The Docker name of one of this stack's volumes (`s3-data` ...)."""
        return json.loads(self.compose("config", "--format", "json").stdout)["volumes"][name]["name"]

    def secret(self, name: str) -> str:
        return self.compose("exec", "-T", "mlflow-server", "cat", f"/run/secrets/{name}").stdout.strip()

    def python_in(self, service: str, code: str) -> str:
        """Run Python inside a running service of the stack (its network, its env)."""
        return self.compose("exec", "-T", service, "python", "-c", code).stdout

    def bucket_objects(self, prefix: str) -> dict:
        """Objects (size, sha256) straight from the S3 store, from inside the stack's network."""
        out = self.compose("exec", "-T", "mlflow-server", "/opt/stack/entrypoint.sh", "objects", "list", prefix).stdout
        return {"objects": last_json(out)}

    def containers(self) -> list[dict]:
        """Every container of the stack, exited one-shot jobs included."""
        out = self.compose("ps", "--all", "--format", "json").stdout.strip()
        if not out:
            return []
        if out.startswith("["):
            return json.loads(out)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def running(self) -> dict[str, str]:
        """service -> container id, running containers only."""
        return {c["Service"]: c["ID"] for c in self.containers() if c.get("State") == "running"}

    def replicas(self, service: str = "mlflow-server") -> dict[str, str]:
        """container name -> id of the running containers of `service`: one per
        replica (MLFLOW_SERVER_REPLICAS), in the order of their numbers."""
        found = [c for c in self.containers() if c["Service"] == service and c.get("State") == "running"]
        return {c["Name"]: c["ID"] for c in sorted(found, key=lambda c: int(c["Name"].rsplit("-", 1)[-1]))}

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
                with urllib.request.urlopen(self.url + path, timeout=5) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except OSError as e:
                last = str(e)
            time.sleep(1)
        raise TimeoutError(f"{self.url}{path} not OK after {timeout:.0f}s (last: {last})")

    def sign_in_codes(self, user: str, password: str, n: int) -> list[int]:
        """The status of n requests with these credentials through nginx, each
        on a new connection, from a throwaway container: refused sign-ins count
        against its address (which is unlocked again), never against the
        caller's. Keep n under MLFLOW_AUTH_MAX_FAILURES (10)."""
        args = json.dumps([user, password, n])
        out = self.compose(
            "run", "--rm", "--no-deps", "-T", "--entrypoint", "python", "trainer", "-c", SIGN_IN_PROBE, args
        ).stdout
        result = last_json(out)
        if 401 in result["codes"]:
            self.script("users", "unlock", result["address"], check=True, timeout=300)
        return result["codes"]

    def logs(self, *services: str) -> str:
        return self.compose("logs", "--no-color", "--timestamps", *services, check=False).stdout
