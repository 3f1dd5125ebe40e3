"""The look-alikes CI tests on match the images users run, by version.

For each default image (read from the compose files) and its look-alike (from
.ci/lookalikes.env), print the version each reports and fail when:
- PostgreSQL's or nginx's major version differs;
- Python's major.minor differs;
- SeaweedFS's version differs at all (the look-alike carries the same `weed`);
- Prometheus's major.minor differs (compose.monitoring.yaml's 2.53 LTS).

The default's version is read from its tag (no registry is reachable); the
look-alike's from the binary inside it. Known differences that remain are
listed in .ci/lookalikes/README.md.

Usage: python3 .ci/check_lookalikes.py   (after .ci/lookalikes/build.sh)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# variable -> (file holding its default, command printing the look-alike's version, parts that must match)
IMAGES = {
    "PYTHON_IMAGE": ("compose.yaml", ["python3", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"], 2),
    "POSTGRES_IMAGE": ("compose.yaml", ["postgres", "--version"], 1),
    "NGINX_IMAGE": ("compose.yaml", ["nginx", "-v"], 1),
    "SEAWEEDFS_IMAGE": ("seaweedfs/store.yaml", ["weed", "version"], 2),
    "PROMETHEUS_IMAGE": ("compose.monitoring.yaml", ["prometheus", "--version"], 2),
}
VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def default_image(variable: str, file: str) -> str:
    match = re.search(rf"\$\{{{variable}:-([^}}]+)\}}", (ROOT / file).read_text())
    if not match:
        raise SystemExit(f"{file} has no default for {variable}")
    return match.group(1)


def lookalikes() -> dict[str, str]:
    env = {}
    for line in (ROOT / ".ci" / "lookalikes.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            env[key.strip()] = value.strip()
    return env


def version(text: str) -> tuple[int, ...]:
    match = VERSION.search(text)
    if not match:
        raise SystemExit(f"no version in {text!r}")
    return tuple(int(p) for p in match.groups() if p is not None)


def reported(image: str, command: list[str]) -> str:
    proc = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", command[0], image, *command[1:]],
        capture_output=True,
        text=True,
    )
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise SystemExit(f"{image}: {' '.join(command)} failed: {out}")
    # `weed version` prints "version 30GB 4.48 ...": the release is the last dotted number.
    return out.splitlines()[0] if "weed" not in command[0] else out.split("version", 1)[-1]


def main() -> int:
    env = lookalikes()
    failed = False
    print(f"{'image':<18}{'default':<46}{'version':>10}  {'look-alike':<34}{'version':>10}  match")
    for variable, (file, command, parts) in IMAGES.items():
        default = default_image(variable, file)
        want = version(default.split(":", 1)[1])
        lookalike = env[variable]
        text = reported(lookalike, command)
        got = version(text.split("GB", 1)[-1] if "weed" in command[0] else text)
        ok = want[:parts] == got[:parts]
        failed |= not ok
        label = {1: "major", 2: "major.minor"}[parts]
        print(
            f"{variable:<18}{default:<46}{'.'.join(map(str, want)):>10}  {lookalike:<34}"
            f"{'.'.join(map(str, got)):>10}  {label} {'ok' if ok else 'DIFFERS'}"
        )
    if failed:
        print("check_lookalikes: a look-alike does not match the version users run", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
