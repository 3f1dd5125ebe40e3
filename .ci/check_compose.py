"""Static checks of the compose variants (`docker compose config` output).

MinIO's binary can't be had on CI machines, so the default variant is checked
here, statically; the SeaweedFS variant is also run live by the test suite
(and its TLS variant by tests/test_tls.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

VARIANTS = {
    "default (MinIO)": ["compose.yaml"],
    "SeaweedFS": ["compose.yaml", "compose.seaweedfs.yaml"],
    "TLS": ["compose.yaml", "compose.tls.yaml"],
    "SeaweedFS + TLS": ["compose.yaml", "compose.seaweedfs.yaml", "compose.tls.yaml"],
}
ONE_SHOT = {"secrets", "bucket", "migrate", "accounts", "trainer", "ops", "tls"}
# Volumes holding private keys: only the `tls` job (and nginx, its own key) mount them.
TLS_PRIVATE = {"tls-ca": {"tls"}, "tls": {"tls", "nginx"}}
EXACT_TAG = re.compile(r"^[\w./-]+(:[\w][\w.-]*)$")


def config(files: list[str]) -> dict:
    args = ["docker", "compose"] + [a for f in files for a in ("-f", f)]
    env_free = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    subprocess.run([*args, "config", "-q"], check=True, env=env_free)
    out = subprocess.run(
        [*args, "config", "--format", "json"], check=True, capture_output=True, text=True, env=env_free
    )
    return json.loads(out.stdout)


def check(name: str, cfg: dict) -> list[str]:
    problems = []
    services = cfg["services"]
    if "version" in cfg:
        problems.append("has a `version:` key")
    published = sorted(s for s, svc in services.items() if svc.get("ports"))
    if published != ["nginx"]:
        problems.append(f"services publishing ports: {published} (want only nginx)")
    for sname, svc in services.items():
        image = svc.get("image", "")
        if not EXACT_TAG.match(image) or image.endswith(":latest"):
            problems.append(f"{sname}: image {image!r} has no exact tag")
        if sname in ONE_SHOT:
            if svc.get("restart", "no") != "no":
                problems.append(f"{sname}: one-shot job must not restart")
            continue
        test = (svc.get("healthcheck") or {}).get("test")
        if not test or svc["healthcheck"].get("disable"):
            problems.append(f"{sname}: long-running service without a health check")
        for dep, cond in (svc.get("depends_on") or {}).items():
            if cond.get("condition") not in ("service_healthy", "service_completed_successfully"):
                problems.append(f"{sname}: depends on {dep} without a health/completion gate")
        if "container_name" in svc:
            problems.append(f"{sname}: fixed container_name")
    for net, spec in (cfg.get("networks") or {}).items():
        if spec.get("name", "").split("_", 1)[-1] != net:
            problems.append(f"network {net}: fixed name {spec.get('name')}")
    if not cfg["networks"].get("backend", {}).get("internal"):
        problems.append("backend network is not internal")
    if "tls" in services:
        problems += check_tls(services)
    return problems


def check_tls(services: dict) -> list[str]:
    """The TLS variant: nginx waits for the certificate job, publishes HTTP (to
    redirect) and HTTPS, and private keys stay out of every other service."""
    problems = []
    nginx = services["nginx"]
    if (nginx.get("depends_on") or {}).get("tls", {}).get("condition") != "service_completed_successfully":
        problems.append("nginx does not wait for the tls job to complete successfully")
    targets = sorted(p.get("target") for p in nginx.get("ports", []))
    if targets != [8080, 8443]:
        problems.append(f"nginx publishes container ports {targets} (want 8080 and 8443)")
    for sname, svc in services.items():
        for vol in svc.get("volumes") or []:
            allowed = TLS_PRIVATE.get(vol.get("source", "")) if vol.get("type") == "volume" else None
            if allowed is not None and sname not in allowed:
                problems.append(f"{sname}: mounts the private-key volume {vol['source']}")
    trainer = services.get("trainer", {})
    if not str((trainer.get("environment") or {}).get("MLFLOW_TRACKING_URI", "")).startswith("https://"):
        problems.append("trainer does not use https")
    return problems


def main() -> int:
    failed = False
    for name, files in VARIANTS.items():
        cfg = config(files)
        active = sorted(cfg["services"])
        problems = check(name, cfg)
        status = "ok" if not problems else "FAILED"
        print(f"{name}: {status} ({len(active)} services: {', '.join(active)})")
        for p in problems:
            print(f"  - {p}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
