"""Static checks of the compose variants (`docker compose config` output).

The default store, SeaweedFS, also runs live in the test suite (and the TLS
variant in tests/test_tls.py). MinIO's binary can't be had on CI machines, so
the S3_STORE=minio choice is checked here only: its config resolves, its
image is pinned, its health check and secrets wiring are right, and choosing
it prints the warning naming its unfixed CVE.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

# name: (compose files, S3_STORE)
ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "default (SeaweedFS)": (["compose.yaml"], ""),
    "MinIO": (["compose.yaml"], "minio"),
    "TLS": (["compose.yaml", "compose.tls.yaml"], ""),
    "MinIO + TLS": (["compose.yaml", "compose.tls.yaml"], "minio"),
    "an old .env naming compose.seaweedfs.yaml": (["compose.yaml", "compose.seaweedfs.yaml"], ""),
    "monitoring (Prometheus)": (["compose.yaml", "compose.monitoring.yaml"], ""),
}
# compose.external.yaml, with its required settings: no bundled store, every
# MLflow container on the external services over verified TLS.
EXTERNAL_FILES = ["compose.yaml", "compose.external.yaml"]
EXTERNAL_ENV = {
    "POSTGRES_HOST": "db.example.internal",
    "S3_ENDPOINT_URL": "https://s3.eu-central-2.example.com",
    "S3_REGION": "eu-central-2",
    "EXTERNAL_SECRETS_DIR": "/srv/mlflow-external",
    "EXTERNAL_NETWORK": "mlflow-egress",
}
MLFLOW_SERVICES = ("bucket", "migrate", "accounts", "mlflow-server", "gc")
MINIO_WARNING = "MINIO_UNFIXED_CVE_2025_62506_ACCEPTED"  # named in compose's "variable is not set" warning
SECRETS_READ = ("/run/secrets/s3_access_key", "/run/secrets/s3_secret_key")
ONE_SHOT = {"secrets", "bucket", "migrate", "accounts", "trainer", "ops", "tls", "ui"}
# Volumes holding private keys: only the `tls` job (and nginx, its own key) mount them.
TLS_PRIVATE = {"tls-ca": {"tls"}, "tls": {"tls", "nginx"}}
EXACT_TAG = re.compile(r"^[\w./-]+(:[\w][\w.-]*)$")


def config(files: list[str], store: str, extra: dict[str, str] | None = None) -> tuple[dict, str]:
    """The resolved config and what `docker compose` printed on stderr."""
    args = ["docker", "compose"] + [a for f in files for a in ("-f", f)]
    env_free = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    if store:
        env_free["S3_STORE"] = store
    env_free.update(extra or {})
    subprocess.run([*args, "config", "-q"], check=True, env=env_free, capture_output=True)
    out = subprocess.run(
        [*args, "config", "--format", "json"], check=True, capture_output=True, text=True, env=env_free
    )
    return json.loads(out.stdout), out.stderr


def check_store(store: str, services: dict, stderr: str) -> list[str]:
    """The S3 store the setting picks: the right image, pinned; its own health
    test; the generated credentials wired in; MinIO's warning printed."""
    problems = []
    s3 = services.get("s3")
    if s3 is None:
        return ["no `s3` service"]
    image = s3.get("image", "")
    want = "quay.io/minio/minio:" if store == "minio" else "chrislusf/seaweedfs:"
    if not image.startswith(want):
        problems.append(f"s3: image {image!r}, want {want}...")
    test = " ".join((s3.get("healthcheck") or {}).get("test") or [])
    mounts = {v.get("target"): v for v in s3.get("volumes") or []}
    if store == "minio":
        health = mounts.get("/stack/health.sh", {}).get("source", "")
        if test != "CMD /bin/sh /stack/health.sh" or not health.endswith("/minio/health.sh"):
            problems.append(f"s3: health check {test!r} is not minio/health.sh")
        elif "mc ready local" not in open(health).read():
            problems.append("s3: minio/health.sh does not ask `mc ready local`")
    elif "/healthz" not in test:
        problems.append(f"s3: health check {test!r} is not SeaweedFS's")
    if mounts.get("/run/secrets", {}).get("source") != "secrets" or "10001" not in (s3.get("group_add") or []):
        problems.append("s3: the secrets volume is not mounted at /run/secrets or not readable (group 10001)")
    script = mounts.get("/stack/entrypoint.sh", {}).get("source", "")
    if not script.endswith(f"/{store or 'seaweedfs'}/entrypoint.sh"):
        problems.append(f"s3: /stack/entrypoint.sh comes from {script!r}")
    elif not all(s in open(script).read() for s in SECRETS_READ):
        problems.append(f"s3: {script} does not read the generated S3 credentials")
    if s3.get("entrypoint") != ["/bin/sh", "/stack/entrypoint.sh"]:
        problems.append(f"s3: entrypoint {s3.get('entrypoint')}")
    if (store == "minio") != (MINIO_WARNING in stderr and "is not set" in stderr):
        problems.append("the CVE warning is printed for the wrong store" if store != "minio" else "no CVE warning")
    if store != "minio" and (s3.get("user") in (None, "", "0", "root") or not s3.get("read_only")):
        problems.append("s3: SeaweedFS must run as its unprivileged user, read-only")
    return problems


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
        if spec.get("external"):
            continue  # an operator's network, named by a setting (compose.external.yaml)
        if spec.get("name", "").split("_", 1)[-1] != net:
            problems.append(f"network {net}: fixed name {spec.get('name')}")
    if not cfg["networks"].get("backend", {}).get("internal"):
        problems.append("backend network is not internal")
    if "tls" in services:
        problems += check_tls(services)
    if "prometheus" in services:
        problems += check_prometheus(services, cfg.get("networks") or {})
    problems += check_nginx_mounts(services["nginx"], "prometheus" in services)
    return problems


def check_nginx_mounts(nginx: dict, monitoring: bool) -> list[str]:
    """nginx gets each of its config files, and nothing else of nginx/ (an
    operator's TLS key lives in nginx/certs); status.conf (stub_status) with
    the monitoring overlay only."""
    problems = []
    binds = {v["target"]: Path(v["source"]).resolve() for v in nginx.get("volumes") or [] if v.get("type") == "bind"}
    sources = set(binds.values())
    here = ROOT / "nginx"
    for conf in sorted(here.glob("*.conf")):
        if conf.name not in ("site.conf", "tls.conf", "status.conf") and conf.resolve() not in sources:
            problems.append(f"nginx: nginx/{conf.name} is not mounted")
    status = binds.get("/etc/nginx/stack/status.conf")
    if status != ((here / "status.conf").resolve() if monitoring else None):
        problems.append(f"nginx: /etc/nginx/stack/status.conf comes from {status} (monitoring overlay: {monitoring})")
    site = binds.get("/etc/nginx/stack/site.conf")
    if site not in ((here / "site.conf").resolve(), (here / "tls.conf").resolve()):
        problems.append(f"nginx: /etc/nginx/stack/site.conf comes from {site}")
    for source in sources:
        if source == here.resolve() or source.is_relative_to((here / "certs").resolve()):
            problems.append(f"nginx: mounts {source} (nginx/certs must stay out of its reach)")
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


def check_prometheus(services: dict, networks: dict) -> list[str]:
    """The monitoring overlay: Prometheus and nginx-exporter non-root and
    read-only, on internal networks only; Prometheus with the scrape token's
    copy, the exporter with no volume at all, neither with the secrets volume;
    nginx's stub_status listener (8081) never published."""
    problems = []
    want_volumes = {"prometheus": {"metrics-token", "prometheus-data"}, "nginx-exporter": set()}
    for name, want in want_volumes.items():
        svc = services[name]
        if svc.get("user") in (None, "", "0", "root") or str(svc.get("user")).startswith("0:"):
            problems.append(f"{name}: runs as root")
        if not svc.get("read_only"):
            problems.append(f"{name}: root filesystem is writable")
        sources = {v.get("source") for v in svc.get("volumes") or [] if v.get("type") == "volume"}
        if sources != want:
            problems.append(f"{name}: volumes {sorted(sources)} (want {sorted(want)}, never secrets)")
        for net in svc.get("networks") or {}:
            if not networks.get(net, {}).get("internal"):
                problems.append(f"{name}: network {net} is not internal")
    published = [str(p.get("target")) for p in services["nginx"].get("ports") or []]
    if "8081" in published:
        problems.append("nginx: publishes 8081 (stub_status stays on the internal network)")
    return problems


def check_external(cfg: dict) -> list[str]:
    """compose.external.yaml: the bundled stores off, the MLflow containers
    pointed at the external ones with verify-full and the CA from the secrets
    volume, the operator's folder mounted read-only into the secrets job only."""
    problems = []
    services = cfg["services"]
    for bundled in ("postgres", "s3"):
        if bundled in services:
            problems.append(f"{bundled}: still started with the external services")
    for name in MLFLOW_SERVICES:
        env = services[name].get("environment") or {}
        want = {
            "POSTGRES_HOST": EXTERNAL_ENV["POSTGRES_HOST"],
            "POSTGRES_SSLMODE": "verify-full",
            "POSTGRES_SSLROOTCERT": "/run/secrets/postgres_ca.crt",
            "S3_ENDPOINT_URL": EXTERNAL_ENV["S3_ENDPOINT_URL"],
            "AWS_DEFAULT_REGION": EXTERNAL_ENV["S3_REGION"],
        }
        wrong = {k: env.get(k) for k, v in want.items() if env.get(k) != v}
        if wrong:
            problems.append(f"{name}: {wrong}")
        if "external" not in (services[name].get("networks") or {}):
            problems.append(f"{name}: not on the external network")
        for dep in services[name].get("depends_on") or {}:
            if dep in ("postgres", "s3"):
                problems.append(f"{name}: still waits for {dep}")
    net = (cfg.get("networks") or {}).get("external", {})
    if not net.get("external") or net.get("name") != EXTERNAL_ENV["EXTERNAL_NETWORK"]:
        problems.append(f"network external: {net}")
    for name, svc in services.items():
        for v in svc.get("volumes") or []:
            if v.get("source") == EXTERNAL_ENV["EXTERNAL_SECRETS_DIR"] and (
                name != "secrets" or not v.get("read_only")
            ):
                problems.append(f"{name}: mounts EXTERNAL_SECRETS_DIR (only the secrets job, read-only)")
    return problems


def main() -> int:
    failed = False
    cfg, _ = config(EXTERNAL_FILES, "", EXTERNAL_ENV)
    problems = check("external", cfg) + check_external(cfg)
    print(f"external PostgreSQL and S3: {'ok' if not problems else 'FAILED'} ({', '.join(sorted(cfg['services']))})")
    for p in problems:
        print(f"  - {p}")
    failed |= bool(problems)
    for name, (files, store) in VARIANTS.items():
        cfg, stderr = config(files, store)
        active = sorted(cfg["services"])
        problems = check(name, cfg) + check_store(store, cfg["services"], stderr)
        status = "ok" if not problems else "FAILED"
        print(f"{name}: {status} ({len(active)} services: {', '.join(active)})")
        for p in problems:
            print(f"  - {p}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
