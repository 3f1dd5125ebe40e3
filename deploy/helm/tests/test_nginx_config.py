"""nginx accepts the config the chart gives it: the ConfigMap's files, as
mounted, checked with `nginx -t` (Debian's nginx 1.22, the binary of compose's
CI look-alike; deploy/helm/check unpacks it without installing it).

Paths are moved from /etc/nginx to a temporary folder and the cluster's names
to 127.0.0.1: nginx resolves the upstream and the resolver when it loads the
config, and no cluster DNS answers here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from chart import Rendered


def nginx_binary() -> Path:
    # Not NGINX: nginx itself reads that variable (inherited sockets).
    found = os.environ.get("NGINX_BIN") or shutil.which("nginx")
    if not found:
        pytest.fail("nginx not found: run through deploy/helm/check (it unpacks Debian's), or set NGINX_BIN")
    return Path(found)


def test_nginx_accepts_the_rendered_config(rendered: Rendered, tmp_path: Path) -> None:
    nginx = nginx_binary()
    # The package's own mime.types, next to the unpacked binary (usr/sbin/nginx -> etc/nginx).
    mime = nginx.resolve().parents[2] / "etc/nginx/mime.types"
    if not mime.is_file():
        mime = Path("/etc/nginx/mime.types")
    env = {k: v for k, v in os.environ.items() if k != "NGINX"}
    server = "mlflow-mlflow-stack-server.mlflow.svc.cluster.local"
    resolver = rendered.values.get("nginx", {}).get("resolver", "kube-dns.kube-system.svc.cluster.local")
    for name, text in rendered.get("ConfigMap", "nginx")["data"].items():
        text = text.replace("/etc/nginx/stack/", f"{tmp_path}/").replace("/etc/nginx/mime.types", str(mime))
        text = text.replace(server, "127.0.0.1").replace(f"resolver {resolver} ", "resolver 127.0.0.1 ")
        (tmp_path / name).write_text(text)
    proc = subprocess.run(
        [str(nginx), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "test is successful" in proc.stderr
