"""The chart's copies of the stack's files (deploy/helm/sync-nginx) match
their sources, and reach the pods verbatim."""

from __future__ import annotations

import subprocess

from chart import CHART_DIR, HELM_DIR, REPO_ROOT, Rendered

FILES = CHART_DIR / "files"
# nginx/ files the chart does not copy: resolver.conf is written from values,
# tls.conf is compose's TLS variant (TLS ends at the Ingress or Gateway here),
# status.conf compose's monitoring overlay (the chart's metrics: its ServiceMonitor).
NOT_COPIED = {"resolver.conf", "tls.conf", "status.conf"}


def copies() -> dict[str, str]:
    """copy (under files/) -> source (from the repository root)."""
    pairs = {f"nginx/{p.name}": f"nginx/{p.name}" for p in (REPO_ROOT / "nginx").glob("*.conf")}
    pairs = {k: v for k, v in pairs.items() if k.split("/")[1] not in NOT_COPIED}
    pairs["postgres/10-create-databases.sh"] = "postgres/initdb/10-create-databases.sh"
    pairs["seaweedfs/entrypoint.sh"] = "seaweedfs/entrypoint.sh"
    return pairs


def test_copies_match_their_sources() -> None:
    drifted = [
        f"{copy} (from {source})"
        for copy, source in copies().items()
        if not (FILES / copy).is_file() or (FILES / copy).read_bytes() != (REPO_ROOT / source).read_bytes()
    ]
    assert not drifted, "run deploy/helm/sync-nginx; drifted: " + ", ".join(drifted)


def test_no_stray_copies() -> None:
    present = {str(p.relative_to(FILES)) for p in FILES.rglob("*") if p.is_file()}
    assert present == set(copies()), present ^ set(copies())


def test_sync_script_agrees() -> None:
    proc = subprocess.run([str(HELM_DIR / "sync-nginx"), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_nginx_files_reach_the_configmap_verbatim(rendered: Rendered) -> None:
    data = rendered.get("ConfigMap", "nginx")["data"]
    for copy in copies():
        if copy.startswith("nginx/") and copy != "nginx/nginx.conf":
            name = copy.split("/")[1]
            assert data[name] == (FILES / copy).read_text(), name
    # nginx.conf: one line differs, the MLflow server's name.
    source = (FILES / "nginx/nginx.conf").read_text().splitlines()
    ours = data["nginx.conf"].splitlines()
    differ = [(a, b) for a, b in zip(source, ours, strict=True) if a != b]
    assert len(differ) == 1 and differ[0][0].strip() == "default mlflow-server:5000;", differ


def test_bundled_store_scripts_are_verbatim(renders: dict[str, Rendered]) -> None:
    trial = renders["trial"]
    initdb = trial.get("ConfigMap", "postgresql")["data"]["10-create-databases.sh"]
    assert initdb == (FILES / "postgres/10-create-databases.sh").read_text()
    entrypoint = trial.get("ConfigMap", "s3")["data"]["entrypoint.sh"]
    assert entrypoint == (FILES / "seaweedfs/entrypoint.sh").read_text()
    assert "-s3.port=9000" in entrypoint
