"""Artifacts: byte for byte into the bucket and back, with MLflow deciding.

For GET and PUT of `/api/2.0/mlflow-artifacts/artifacts/<path>`, nginx asks
mlflow-server (`stack_ops/server/artifacts.py`) and streams the body straight
to or from the S3 store. These tests prove, on the live stack:

- the bytes round-trip byte for byte (64 MB, and at the single-PUT limit,
  where uploads switch to MLflow's proxy), with no S3 credentials on the
  client and nothing spooled to the server's disk;
- the answer for every kind of user is the one MLflow's own artifact proxy
  gives for the same request (asked directly, bypassing nginx);
- a missing artifact is a fast JSON 404 (so `runs:/` model loads are fast);
- a stopped store is a quick JSON 503, and transfers work again after it;
- a cut upload leaves no object; no store address, signature or credential
  reaches a client;
- clients that force multipart fall back to the proxy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from sklearn.linear_model import LogisticRegression

from stack import Stack, sha256_file, unique

ART = "/api/2.0/mlflow-artifacts/artifacts"
SIZE = 64 * 1024 * 1024 + 12345  # at least 50 MB, not a multiple of any chunk size
# Headers a client may see on an artifact transfer. nginx can only list what
# to drop (nginx/store-headers.conf); this checks the other way round.
ALLOWED_HEADERS = {
    "server",
    "date",
    "content-type",
    "content-length",
    "content-disposition",
    "content-range",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "accept-ranges",
    "etag",
    "last-modified",
    "retry-after",
    "www-authenticate",
    "x-content-type-options",
    "x-frame-options",
    "content-security-policy",
    "referrer-policy",
    "strict-transport-security",
    "vary",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def artifact_root(run) -> str:
    """The bucket prefix of a run's artifacts (`<experiment>/<run>/artifacts`)."""
    return run.info.artifact_uri.removeprefix("mlflow-artifacts:/").strip("/")


def server_log(stack: Stack) -> str:
    return stack.compose("logs", "--no-color", "mlflow-server").stdout


def assert_no_store_details(r: requests.Response, stack: Stack) -> None:
    """No store address, signature or credential in what a client gets."""
    extra = {k.lower() for k in r.headers} - ALLOWED_HEADERS
    assert not extra, f"headers from the store reach the client: {sorted(extra)}"
    text = "\n".join(f"{k}: {v}" for k, v in r.headers.items())
    if "json" in r.headers.get("Content-Type", "") or r.status_code >= 400:
        text += "\n" + r.text
    access_key = stack.secret("s3_access_key")
    for leak in ("s3:9000", "X-Amz", "x-amz", "Signature", "AWSAccessKeyId", access_key, "<Error>"):
        assert leak not in text, f"{leak!r} in {r.status_code} answer:\n{text}"


# --- bytes ----------------------------------------------------------------------


def test_large_artifact_round_trip_without_s3_credentials(stack: Stack, tracking: None, tmp_path: Path) -> None:
    assert "AWS_SECRET_ACCESS_KEY" not in os.environ
    src = tmp_path / "weights.bin"
    digest = write_random(src, SIZE)

    mlflow.set_experiment(unique("artifacts"))
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(src), artifact_path="blobs")
        mlflow.log_dict({"answer": 42}, "meta/info.json")
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")

    client = mlflow.MlflowClient()
    listed = {f.path: f.file_size for f in client.list_artifacts(run.info.run_id, "blobs")}
    assert listed == {"blobs/weights.bin": SIZE}

    out = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="blobs/weights.bin", dst_path=str(tmp_path / "dl")
        )
    )
    assert out.stat().st_size == SIZE
    assert sha256_file(out) == digest
    assert mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/meta/info.json") == {"answer": 42}

    # The object really is in the bucket, under the run's artifact path.
    rel = artifact_root(run)
    probe = stack.bucket_objects(rel)
    key = f"{rel}/blobs/weights.bin"
    assert probe["objects"][key] == {"size": SIZE, "sha256": digest}
    assert f"{rel}/meta/info.json" in probe["objects"]
    # The bytes went between nginx and the store: MLflow's server never served them.
    log = server_log(stack)
    for method in ("PUT", "GET"):
        assert f'"{method} {ART}/{key} ' not in log


@pytest.mark.slow
def test_single_put_limit_boundary(stack: Stack, tracking: None, tmp_path: Path) -> None:
    """At the limit (ARTIFACT_DIRECT_MAX_UPLOAD_BYTES: the suite's own stack
    sets 128 MiB, the default is AWS S3's 5 GiB) an upload goes straight to the
    store and nothing is spooled on the server; one byte more goes through
    MLflow's proxy (multipart to the store). Both round-trip byte for byte."""
    limit = int(stack.compose("exec", "-T", "mlflow-server", "printenv", "ARTIFACT_DIRECT_MAX_UPLOAD_BYTES").stdout)
    mlflow.set_experiment(unique("boundary"))
    with mlflow.start_run() as run:
        root = artifact_root(run)
        for name, size in (("at-limit.bin", limit), ("over-limit.bin", limit + 1)):
            src = tmp_path / name
            digest = write_random(src, size)
            mlflow.log_artifact(str(src))
            # /tmp/prometheus: the metrics' own tmpfs (memory-mapped counters), never an upload.
            spooled = stack.compose(
                "exec", "-T", "mlflow-server",
                "find", "/tmp", "-path", "/tmp/prometheus", "-prune", "-o", "-type", "f", "-size", "+1M", "-print",
            )  # fmt: skip
            assert spooled.stdout == "", f"left in the server's /tmp after {name}: {spooled.stdout}"
            out = Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run.info.run_id, artifact_path=name, dst_path=str(tmp_path / "dl")
                )
            )
            assert sha256_file(out) == digest, name
            src.unlink()
            out.unlink()
    log = server_log(stack)
    assert f'"PUT {ART}/{root}/at-limit.bin ' not in log  # straight to the store
    assert f'"PUT {ART}/{root}/over-limit.bin ' in log  # MLflow's proxy
    sizes = {k: v["size"] for k, v in stack.bucket_objects(root)["objects"].items()}
    assert sizes == {f"{root}/at-limit.bin": limit, f"{root}/over-limit.bin": limit + 1}


def test_downloads_carry_mlflows_type_and_file_name(
    stack: Stack, http: requests.Session, admin: tuple[str, str], tracking: None, tmp_path: Path
) -> None:
    mlflow.set_experiment(unique("types"))
    names = ("tables/data.csv", "meta.json", "plot.png", "model.tar.gz", "MLmodel", "notes ünïcode.txt")
    with mlflow.start_run() as run:
        for name in names:
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(name.encode() * 100)
            mlflow.log_artifact(str(path), artifact_path=str(Path(name).parent) if "/" in name else None)
    root = artifact_root(run)
    paths = [f"{ART}/{root}/{requests.utils.quote(name)}" for name in names]
    direct = mlflow_direct(stack, [{"method": "GET", "path": p, "data": None, "auth": list(admin)} for p in paths])
    for name, path, mlflow_answer in zip(names, paths, direct, strict=True):
        r = http.get(stack.url + path, timeout=30)
        assert r.status_code == mlflow_answer["status"] == 200, name
        assert r.content == name.encode() * 100  # as stored: no Content-Encoding for .gz
        for header, value in mlflow_answer["headers"].items():
            assert r.headers.get(header) == value, f"{name} {header}: {r.headers.get(header)!r}, MLflow {value!r}"
        assert [k for k in r.raw.headers if k.lower() == "content-type"] == ["Content-Type"], name
        assert_no_store_details(r, stack)


def test_cut_upload_leaves_no_object(stack: Stack, admin: tuple[str, str], http: requests.Session) -> None:
    exp = http.post(f"{stack.url}/api/2.0/mlflow/experiments/create", json={"name": unique("cut")}, timeout=30)
    run = http.post(f"{stack.url}/api/2.0/mlflow/runs/create", json={"experiment_id": exp.json()["experiment_id"]})
    root = run.json()["run"]["info"]["artifact_uri"].removeprefix("mlflow-artifacts:/")
    token = base64.b64encode(":".join(admin).encode()).decode()
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as s:
        s.sendall(
            (
                f"PUT {ART}/{root}/cut.bin HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\n"
                f"Authorization: Basic {token}\r\nContent-Length: {10 << 20}\r\n\r\n"
            ).encode()
        )
        s.sendall(os.urandom(4 << 20))  # 4 of the promised 10 MiB, then hang up
    time.sleep(3)
    assert stack.bucket_objects(root)["objects"] == {}
    # The same path works for the next, complete upload.
    assert http.put(f"{stack.url}{ART}/{root}/cut.bin", data=b"whole", timeout=30).status_code == 200
    assert http.get(f"{stack.url}{ART}/{root}/cut.bin", timeout=30).content == b"whole"


# --- who may do what --------------------------------------------------------------


def new_user(stack: Stack, http: requests.Session) -> tuple[str, str]:
    name, password = unique("art"), base64.b32encode(os.urandom(20)).decode()
    r = http.post(f"{stack.url}/api/2.0/mlflow/users/create", json={"username": name, "password": password}, timeout=30)
    assert r.status_code == 200, r.text
    return name, password


def grant(stack: Stack, http: requests.Session, user: str, experiment_id: str, permission: str) -> None:
    r = http.post(
        f"{stack.url}/api/3.0/mlflow/users/permissions/grant",
        json={"username": user, "resource_type": "experiment", "resource_id": experiment_id, "permission": permission},
        timeout=30,
    )
    assert r.status_code == 200, r.text


# Sent inside the server container to 127.0.0.1:5000: MLflow's own artifact
# proxy and its own authorization, with no nginx in between.
DIRECT = """
import base64, hashlib, json, sys, urllib.request
out = []
for q in json.loads(sys.stdin.readline()):
    h = {}
    if q["auth"]:
        h["Authorization"] = "Basic " + base64.b64encode(":".join(q["auth"]).encode()).decode()
    data = q["data"].encode() if q["data"] is not None else None
    req = urllib.request.Request("http://127.0.0.1:5000" + q["path"], data=data, method=q["method"], headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            kept = {k: r.headers.get(k) for k in ("Content-Type", "Content-Disposition")}
            out.append({"status": r.status, "sha": hashlib.sha256(r.read()).hexdigest(), "headers": kept})
    except urllib.error.HTTPError as e:
        out.append({"status": e.code, "sha": None, "headers": {}})
print(json.dumps(out))
"""


def mlflow_direct(stack: Stack, asked: list[dict]) -> list[dict]:
    """What MLflow alone answers to each request (no nginx, no stack fast path)."""
    proc = stack.compose(
        "exec", "-T", "mlflow-server", "python", "-c", DIRECT, input=json.dumps(asked) + "\n", timeout=300
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shared_experiment(stack: Stack, http: requests.Session) -> dict:
    """An experiment owned by a teammate, holding one file, and one user per
    kind of access to it."""
    owner = new_user(stack, http)
    s = requests.Session()
    s.auth = owner
    exp_id = s.post(
        f"{stack.url}/api/2.0/mlflow/experiments/create", json={"name": unique("matrix")}, timeout=30
    ).json()["experiment_id"]
    run = s.post(f"{stack.url}/api/2.0/mlflow/runs/create", json={"experiment_id": exp_id}, timeout=30).json()
    root = f"{exp_id}/{run['run']['info']['run_id']}/artifacts"
    seed = os.urandom(300_001)
    r = s.put(f"{stack.url}{ART}/{root}/seed.bin", data=seed, timeout=60)
    assert r.status_code == 200, r.text
    users = {"owner": owner, "default (no grant)": new_user(stack, http)}
    for permission in ("READ", "USE", "EDIT", "MANAGE", "DENY"):
        users[permission] = new_user(stack, http)
        grant(stack, http, users[permission][0], exp_id, permission)
    return {"root": root, "seed_sha": sha256(seed), "users": users}


# (download, upload) for each kind of user, with MLFLOW_DEFAULT_PERMISSION=READ.
EXPECTED = {
    "admin": (200, 200),
    "owner": (200, 200),
    "default (no grant)": (200, 403),
    "READ": (200, 403),
    "USE": (200, 403),
    "EDIT": (200, 200),
    "MANAGE": (200, 200),
    "DENY": (403, 403),
    "anonymous": (401, 401),
}


def test_permission_matrix_matches_mlflows_own_authorization(
    stack: Stack, admin: tuple[str, str], shared_experiment: dict
) -> None:
    root = shared_experiment["root"]
    who = {**shared_experiment["users"], "admin": admin, "anonymous": None}
    via_nginx, asked = {}, []
    for name, creds in who.items():
        tag = hashlib.sha256(name.encode()).hexdigest()[:8]
        body = f"written by {name}"
        get = requests.get(f"{stack.url}{ART}/{root}/seed.bin", auth=creds, timeout=60)
        put = requests.put(f"{stack.url}{ART}/{root}/{tag}-nginx.txt", data=body, auth=creds, timeout=60)
        via_nginx[name] = (get, put, f"{root}/{tag}-nginx.txt", body)
        auth = list(creds or [])
        asked.append({"who": name, "method": "GET", "path": f"{ART}/{root}/seed.bin", "data": None, "auth": auth})
        asked.append(
            {"who": name, "method": "PUT", "path": f"{ART}/{root}/{tag}-mlflow.txt", "data": body, "auth": auth}
        )
    mlflow_says: dict[str, list[int]] = {}
    for q, answer in zip(asked, mlflow_direct(stack, asked), strict=True):
        mlflow_says.setdefault(q["who"], []).append(answer["status"])

    objects = stack.bucket_objects(root)["objects"]
    for name, (get, put, key, body) in via_nginx.items():
        nginx_says = (get.status_code, put.status_code)
        assert nginx_says == tuple(mlflow_says[name]), f"{name}: nginx {nginx_says}, MLflow itself {mlflow_says[name]}"
        assert nginx_says == EXPECTED[name], f"{name}: {nginx_says}, expected {EXPECTED[name]}"
        if get.status_code == 200:
            assert sha256(get.content) == shared_experiment["seed_sha"], name
        else:
            assert get.json()["error_code"] in ("PERMISSION_DENIED", "UNAUTHENTICATED"), get.text
        if put.status_code == 200:
            assert objects[key] == {"size": len(body), "sha256": sha256(body.encode())}, name
        else:
            assert key not in objects, f"{name}'s refused upload was stored"
            assert put.json()["error_code"] in ("PERMISSION_DENIED", "UNAUTHENTICATED"), put.text
        for r in (get, put):
            assert_no_store_details(r, stack)
    assert via_nginx["anonymous"][0].headers["WWW-Authenticate"] == 'Basic realm="mlflow"'


def test_wrong_password_is_refused_like_mlflow_does(stack: Stack, shared_experiment: dict) -> None:
    # One attempt each way: failed sign-ins count towards the address lockout.
    user = shared_experiment["users"]["owner"][0]
    path = f"{ART}/{shared_experiment['root']}/seed.bin"
    r = requests.get(stack.url + path, auth=(user, "not-the-password"), timeout=30)
    direct = mlflow_direct(stack, [{"method": "GET", "path": path, "data": None, "auth": [user, "not-the-password"]}])
    assert r.status_code == direct[0]["status"] == 401
    assert r.json()["error_code"] == "UNAUTHENTICATED"


def test_decision_endpoint_is_not_reachable_from_outside(stack: Stack, admin: tuple[str, str]) -> None:
    for auth in (None, admin):
        for path in ("/_stack/artifact-access", "/_stack/artifact-access?x=1", "/_stack/", "/_stack//artifact-access"):
            r = requests.get(
                stack.url + path,
                auth=auth,
                headers={"X-Original-Method": "GET", "X-Original-URI": f"{ART}/0/x/artifacts/y"},
                timeout=30,
            )
            assert r.status_code == 404, f"{path} ({'admin' if auth else 'anonymous'}): {r.status_code}"
            assert "X-Stack-Target" not in r.headers and "s3:9000" not in r.text


# --- errors -------------------------------------------------------------------------


def test_missing_artifact_is_a_fast_json_404(stack: Stack, http: requests.Session, tracking: None) -> None:
    mlflow.set_experiment(unique("missing"))
    with mlflow.start_run() as run:
        mlflow.log_text("here", "present.txt")
    root = artifact_root(run)
    answers = {
        "proxy download": f"{stack.url}{ART}/{root}/absent.bin",
        "ajax download": f"{stack.url}/ajax-api/2.0/mlflow-artifacts/artifacts/{root}/absent.bin",
        "a directory's name": f"{stack.url}{ART}/{root}",
        "get-artifact (the UI)": f"{stack.url}/get-artifact?run_uuid={run.info.run_id}&path=absent.bin",
    }
    for what, url in answers.items():
        t0 = time.monotonic()
        r = http.get(url, timeout=30)
        elapsed = time.monotonic() - t0
        assert r.status_code == 404, f"{what}: {r.status_code} {r.text[:300]}"
        assert r.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST", f"{what}: {r.text[:300]}"
        assert elapsed < 1.0, f"{what}: {elapsed:.2f}s"
        assert_no_store_details(r, stack)


def test_runs_uri_model_load_is_fast(stack: Stack, tracking: None) -> None:
    """MLflow 3 keeps a logged model outside the run's artifacts; a `runs:/`
    load first asks the run's tree for `model` and must get a 404 at once
    (a 500 made MLflow's client retry for about four minutes)."""
    x = np.linspace(0, 1, 40).reshape(-1, 2)
    y = (x[:, 0] > 0.5).astype(int)
    mlflow.set_experiment(unique("runs-uri"))
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(LogisticRegression().fit(x, y), name="model")
    t0 = time.monotonic()
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    elapsed = time.monotonic() - t0
    assert list(model.predict(x)) == list(y)
    assert elapsed < 5.0, f"runs:/ load took {elapsed:.1f}s"


@pytest.mark.slow
def test_stopped_store_is_a_quick_json_503_and_transfers_resume(stack: Stack, http: requests.Session) -> None:
    exp = http.post(f"{stack.url}/api/2.0/mlflow/experiments/create", json={"name": unique("down")}, timeout=30)
    run = http.post(f"{stack.url}/api/2.0/mlflow/runs/create", json={"experiment_id": exp.json()["experiment_id"]})
    root = run.json()["run"]["info"]["artifact_uri"].removeprefix("mlflow-artifacts:/")
    url = f"{stack.url}{ART}/{root}/f.txt"
    assert http.put(url, data=b"before", timeout=30).status_code == 200
    store = stack.s3_service
    stack.compose("stop", store)
    try:
        for method, data in (("GET", None), ("PUT", b"during")):
            t0 = time.monotonic()
            r = http.request(method, url, data=data, timeout=60)
            elapsed = time.monotonic() - t0
            assert r.status_code in (502, 503), f"{method}: {r.status_code} {r.text[:200]}"
            assert r.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
            assert elapsed < 10, f"{method} took {elapsed:.1f}s"
            assert_no_store_details(r, stack)
    finally:
        stack.compose("start", store)
    deadline, last = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        last = http.get(url, timeout=30)
        if last.status_code == 200:
            break
        time.sleep(2)
    assert last is not None and last.status_code == 200 and last.content == b"before", last
    assert http.put(url, data=b"after", timeout=30).status_code == 200
    assert http.get(url, timeout=30).content == b"after"


# --- what the server advertises ----------------------------------------------------


def test_server_advertises_proxied_transfers_only(stack: Stack, http) -> None:
    # Presigned URLs would send clients (and the UI) to the private S3 store.
    for prefix in ("api", "ajax-api"):
        info = http.get(f"{stack.url}/{prefix}/3.0/mlflow/server-info", timeout=10).json()
        assert info["multipart_uploads_enabled"] is False
        assert info["multipart_downloads_enabled"] is False
    r = http.get(f"{stack.url}/api/2.0/mlflow-artifacts/presigned/0/x/artifacts/a.bin", timeout=10)
    assert r.status_code == 501


def test_clients_that_force_multipart_fall_back_to_the_proxy(
    stack: Stack, tracking: None, tmp_path: Path, monkeypatch
) -> None:
    # Teammates who set MLflow's multipart switches (common advice for big
    # models) must still get their artifact stored and back, through the proxy:
    # the stack refuses presigned/multipart S3 transfers in the words MLflow's
    # client takes as "not supported here" instead of failing the upload.
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "true")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(1 << 20))
    monkeypatch.setenv("MLFLOW_MULTIPART_DOWNLOAD_MINIMUM_FILE_SIZE", str(1 << 20))
    size = 3 * (1 << 20) + 7
    src = tmp_path / "model.bin"
    digest = write_random(src, size)

    mlflow.set_experiment(unique("multipart"))
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(src))
    out = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="model.bin", dst_path=str(tmp_path / "dl")
        )
    )
    assert sha256_file(out) == digest

    rel = artifact_root(run)
    assert stack.bucket_objects(rel)["objects"] == {f"{rel}/model.bin": {"size": size, "sha256": digest}}
