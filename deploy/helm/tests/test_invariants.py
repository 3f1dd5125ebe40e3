"""What must hold in every rendered scenario: pinned images, sized and probed
containers, Pod Security "restricted", secrets only from Secrets, schema
migrations before the server, one periodic-job runner, network isolation."""

from __future__ import annotations

import base64
import re

import pytest
from chart import (
    Rendered,
    annotations,
    containers,
    env_of,
    labels,
    name_of,
    pod_template,
    render,
    selects,
    walk,
)

FLOATING_TAGS = {"latest", "stable", "edge", "main", "master", "nightly", "mainline", "alpine"}
# Volume types Pod Security "restricted" allows.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SECRETISH_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PASSPHRASE|CREDENTIAL", re.IGNORECASE)
HOOK_PHASES = {"pre-install", "pre-upgrade"}


def image_tag(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


@pytest.mark.parametrize(
    ("image", "floating"),
    [
        ("nginx:1.28.0-alpine", False),
        ("chrislusf/seaweedfs:4.48", False),
        ("registry:5000/a/b:0.1.0@sha256:" + "0" * 64, False),
        ("postgres:17", True),
        ("postgres:17-bookworm", True),
        ("nginx", True),
        ("nginx:latest", True),
        ("registry:5000/nginx", True),
    ],
)
def test_floating_tag_rule(image: str, floating: bool) -> None:
    assert is_floating(image) == floating


def is_floating(image: str) -> bool:
    tag = image_tag(image)
    return not tag or tag in FLOATING_TAGS or bool(re.fullmatch(r"v?\d+(-[a-z]+)?", tag))


def test_no_floating_image_tags(rendered: Rendered) -> None:
    images = {c["image"] for w in rendered.workloads() for c in containers(w)}
    assert images
    floating = sorted(i for i in images if is_floating(i))
    assert not floating, floating


def test_every_container_has_requests_and_limits(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        for c in containers(workload):
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{name_of(workload)}/{c['name']}: {part}"


def test_every_serving_container_is_probed(rendered: Rendered) -> None:
    """A container with a port serves: it gets readiness and liveness probes."""
    serving = 0
    for workload in rendered.workloads():
        for c in containers(workload, init=False):
            if c.get("ports"):
                serving += 1
                assert c.get("readinessProbe") and c.get("livenessProbe"), f"{name_of(workload)}/{c['name']}"
    assert serving >= 2


def test_server_probes_health(rendered: Rendered) -> None:
    server = containers(rendered.get("Deployment", "server"), init=False)[0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["path"] == "/health"


def test_every_pod_meets_pod_security_restricted(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        spec = pod_template(workload)["spec"]
        pod_ctx = spec.get("securityContext", {})
        where = name_of(workload)
        assert not (spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC")), where
        assert spec.get("automountServiceAccountToken") is False, where
        for volume in spec.get("volumes", []):
            kinds = set(volume) - {"name"}
            assert kinds <= RESTRICTED_VOLUMES, f"{where}: volume {volume['name']} is {kinds}"
        for c in containers(workload):
            ctx = {**pod_ctx, **c.get("securityContext", {})}
            who = f"{where}/{c['name']}"
            assert ctx.get("runAsNonRoot") is True, who
            assert int(ctx.get("runAsUser", 0)) > 0, who
            assert ctx.get("allowPrivilegeEscalation") is False, who
            assert ctx.get("readOnlyRootFilesystem") is True, who
            assert not ctx.get("privileged"), who
            assert "ALL" in ctx.get("capabilities", {}).get("drop", []), who
            assert not ctx.get("capabilities", {}).get("add"), who
            assert ctx.get("seccompProfile", {}).get("type") == "RuntimeDefault", who


def generated_secret_values(rendered: Rendered) -> dict[str, str]:
    secrets = rendered.of_kind("Secret")
    assert len(secrets) <= 1
    if not secrets:
        return {}
    return {k: base64.b64decode(v).decode() for k, v in secrets[0].get("data", {}).items()}


def test_secrets_come_only_from_secrets(rendered: Rendered) -> None:
    values = generated_secret_values(rendered)
    if rendered.values.get("secrets", {}).get("existingSecret"):
        assert not values, "an existingSecret is used as it is: the chart renders no Secret"
    else:
        assert {"mlflow_db_password", "auth_db_password", "mlflow_admin_password", "flask_secret_key"} <= set(values)
        assert all(len(v) >= 20 for v in values.values()), "generated values are long"
    # No secret value, nor any value under a secret-like name, outside the Secret.
    for obj in rendered.objects:
        if obj["kind"] == "Secret":
            continue
        text = "\n".join(str(s) for s in walk(obj))
        for key, value in values.items():
            assert value not in text, f"{name_of(obj)} holds the value of {key}"
        if obj["kind"] == "ConfigMap":
            for key in obj.get("data", {}):
                assert not SECRETISH_ENV.search(key) and key not in values, f"{name_of(obj)}: {key}"
    for workload in rendered.workloads():
        for c in containers(workload):
            for item in c.get("env", []):
                # NAME_FILE holds a path (the image reads the secret from it).
                if SECRETISH_ENV.search(item["name"]) and "value" in item and not item["name"].endswith("_FILE"):
                    pytest.fail(f"{name_of(workload)}/{c['name']}: {item['name']} is a plain value")
        for volume in pod_template(workload)["spec"].get("volumes", []):
            if "secret" in volume and volume["name"] == "secrets":
                assert volume["secret"]["secretName"] in (
                    rendered.values.get("secrets", {}).get("existingSecret") or "mlflow-mlflow-stack-secrets"
                )
                if values:
                    missing = {i["key"] for i in volume["secret"]["items"]} - set(values)
                    assert not missing, f"{name_of(workload)} mounts keys the Secret lacks: {missing}"


def test_secret_files_are_mounted_at_run_secrets(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        if labels(workload)["app.kubernetes.io/component"] == "nginx":
            assert all(v["name"] != "secrets" for v in pod_template(workload)["spec"]["volumes"]), "nginx: no secrets"
            continue
        for c in containers(workload):
            mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
            if c["name"] in ("nginx",):
                continue
            assert mounts["secrets"]["mountPath"] == "/run/secrets" and mounts["secrets"]["readOnly"], c["name"]


def test_the_secret_is_generated_before_the_hooks_that_read_it(rendered: Rendered) -> None:
    for secret in rendered.of_kind("Secret"):
        ann = annotations(secret)
        assert set(ann["helm.sh/hook"].split(",")) == HOOK_PHASES
        assert int(ann["helm.sh/hook-weight"]) < 0
    # The generator keeps what the cluster has (lookup), so upgrades never rotate passwords.
    assert 'lookup "v1" "Secret"' in (rendered_template("secret.yaml"))


def rendered_template(name: str) -> str:
    from chart import CHART_DIR

    return (CHART_DIR / "templates" / name).read_text()


def test_schema_migrations_run_before_the_server(rendered: Rendered) -> None:
    """External PostgreSQL: a pre-install/pre-upgrade hook Job. Bundled: the
    (single) server pod's init container, since the database only exists with
    the release."""
    server = rendered.get("Deployment", "server")
    inits = [c["name"] for c in pod_template(server)["spec"].get("initContainers", [])]
    bundled = rendered.values.get("postgresql", {}).get("bundled", {}).get("enabled", False)
    if bundled:
        assert "migrate" in inits and not rendered.has("Job", "migrate")
        assert server["spec"]["replicas"] == 1 and not rendered.of_kind("HorizontalPodAutoscaler")
        return
    assert "migrate" not in inits
    job = rendered.get("Job", "migrate")
    ann = annotations(job)
    assert set(ann["helm.sh/hook"].split(",")) == HOOK_PHASES
    assert containers(job)[0]["args"] == ["migrate"]
    # What the Job needs exists before it: hook objects of a lower weight.
    weight = int(ann["helm.sh/hook-weight"])
    sa = pod_template(job)["spec"]["serviceAccountName"]
    hook_sa = [o for o in rendered.of_kind("ServiceAccount") if o["metadata"]["name"] == sa]
    assert hook_sa and int(annotations(hook_sa[0])["helm.sh/hook-weight"]) < weight
    for secret in rendered.of_kind("Secret"):
        assert int(annotations(secret)["helm.sh/hook-weight"]) < weight


def test_bucket_creation_is_optional(rendered: Rendered) -> None:
    s3 = rendered.values.get("s3", {})
    wanted = s3.get("createBucket", True)
    inits = pod_template(rendered.get("Deployment", "server"))["spec"].get("initContainers", [])
    in_pod = any(c["name"] == "bucket" for c in inits)
    as_hook = rendered.has("Job", "bucket")
    assert (in_pod or as_hook) == wanted
    assert not (in_pod and as_hook)
    if as_hook:
        assert set(annotations(rendered.get("Job", "bucket"))["helm.sh/hook"].split(",")) == HOOK_PHASES


def test_exactly_one_periodic_job_runner(rendered: Rendered) -> None:
    cronjobs = rendered.of_kind("CronJob")
    assert len(cronjobs) == 1
    gc = cronjobs[0]
    assert gc["spec"]["concurrencyPolicy"] == "Forbid"
    assert containers(gc)[0]["args"] == ["gc", "--once"]
    for workload in rendered.workloads():
        if workload is gc:
            continue
        for c in containers(workload):
            assert "gc" not in c.get("args", [])[:1], f"{name_of(workload)} runs gc too"
            assert env_of(c).get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false") == "false", name_of(workload)


def test_job_execution_runs_on_exactly_one_pod() -> None:
    rendered = render({"server": {"jobExecution": True, "replicas": 1}}, "job-execution")
    runners = [
        w
        for w in rendered.workloads()
        for c in containers(w)
        if env_of(c).get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION") == "true"
    ]
    assert [name_of(w) for w in runners] == ["Deployment/mlflow-mlflow-stack-server"]
    server = runners[0]
    assert server["spec"]["replicas"] == 1
    # Never two during a rollout, and nothing scales it.
    assert server["spec"]["strategy"] == {"type": "Recreate"}
    assert not rendered.of_kind("HorizontalPodAutoscaler")


def mlflow_containers(rendered: Rendered) -> list[tuple[str, dict]]:
    """(workload, container) for every container given the stack's common
    settings (`mlflow-stack.env`): the server, its jobs and gc."""
    return [
        (name_of(w), c)
        for w in rendered.workloads()
        for c in containers(w)
        if "MLFLOW_SERVER_URL" in env_of(c)  # one of those settings
    ]


def test_mlflow_telemetry_is_off_unless_asked_for(rendered: Rendered) -> None:
    found = mlflow_containers(rendered)
    assert any(name.startswith("Deployment/") for name, _ in found)
    for name, c in found:
        assert env_of(c)["MLFLOW_DISABLE_TELEMETRY"] == "true", name
    opted_in = render({"mlflow": {"telemetry": True}}, "telemetry")
    assert {env_of(c)["MLFLOW_DISABLE_TELEMETRY"] for _, c in mlflow_containers(opted_in)} == {"false"}


def test_irsa_means_no_static_s3_keys(renders: dict[str, Rendered]) -> None:
    irsa = renders["irsa"]
    role = "eks.amazonaws.com/role-arn"
    accounts = irsa.of_kind("ServiceAccount")
    assert accounts and all(role in annotations(sa) for sa in accounts)
    for workload in irsa.workloads():
        for volume in pod_template(workload)["spec"].get("volumes", []):
            if volume["name"] == "secrets" and "secret" in volume:
                keys = {i["key"] for i in volume["secret"]["items"]}
                assert not keys & {"s3_access_key", "s3_secret_key"}, name_of(workload)
    env = env_of(containers(irsa.get("Deployment", "server"), init=False)[0])
    assert env["S3_ENDPOINT_URL"] == "" and env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert irsa.get("Deployment", "server")["spec"]["template"]["spec"]["serviceAccountName"] == "mlflow-mlflow-stack"


def test_external_postgresql_is_verified(renders: dict[str, Rendered]) -> None:
    for name in ("external", "irsa"):
        server = containers(renders[name].get("Deployment", "server"), init=False)[0]
        env = env_of(server)
        assert env["POSTGRES_SSLMODE"] == "verify-full"
        mounts = {m["mountPath"] for m in server["volumeMounts"]}
        assert env["POSTGRES_SSLROOTCERT"] == "/etc/stack/postgresql-ca/ca.crt"
        assert "/etc/stack/postgresql-ca" in mounts
        job = renders[name].get("Job", "migrate")
        assert env_of(containers(job)[0])["POSTGRES_SSLMODE"] == "verify-full"


def test_settings_reach_the_server(renders: dict[str, Rendered]) -> None:
    env = env_of(containers(renders["external"].get("Deployment", "server"), init=False)[0])
    assert env["S3_ENDPOINT_URL"] == "https://s3.eu-central-2.wasabisys.com"
    assert env["S3_BUCKET"] == "acme-mlflow-artifacts"
    assert env["POSTGRES_HOST"].endswith(".rds.example.com")
    hostnames = env["MLFLOW_PUBLIC_HOSTNAMES"].split(",")
    assert "mlflow.example.com" in hostnames
    # gc reaches the server by its Service, and the server accepts that Host.
    server_url = env["MLFLOW_SERVER_URL"]
    assert server_url == "http://mlflow-mlflow-stack-server.mlflow.svc.cluster.local:5000"
    assert server_url.split("//")[1].split(":")[0] in hostnames
    trial = env_of(containers(renders["trial"].get("Deployment", "server"), init=False)[0])
    assert trial["S3_ENDPOINT_URL"] == "http://mlflow-mlflow-stack-s3.mlflow.svc.cluster.local:9000"
    assert trial["POSTGRES_HOST"] == "mlflow-mlflow-stack-postgresql.mlflow.svc.cluster.local"


def policies_for(rendered: Rendered, workload: dict) -> list[dict]:
    pod_labels = pod_template(workload)["metadata"]["labels"]
    return [p for p in rendered.of_kind("NetworkPolicy") if selects(p["spec"]["podSelector"], pod_labels)]


def test_every_pod_is_isolated_by_a_network_policy(rendered: Rendered) -> None:
    for workload in rendered.workloads():
        policies = policies_for(rendered, workload)
        assert policies, f"{name_of(workload)} is not selected by any NetworkPolicy"
        types = {t for p in policies for t in p["spec"]["policyTypes"]}
        assert types == {"Ingress", "Egress"}, name_of(workload)


def allowed_sources(rendered: Rendered, workload: dict) -> list[dict]:
    """The ingress peers of every policy selecting the workload; `{}` is "anyone"."""
    peers = []
    for policy in policies_for(rendered, workload):
        for rule in policy["spec"].get("ingress", []):
            peers += rule.get("from", [{}])
    return peers


def test_network_policies_mirror_compose_networks(rendered: Rendered) -> None:
    """Only nginx takes traffic from anywhere; the server from nginx and gc
    (and a metrics scraper); the jobs from nobody; the bundled stores from the
    stack's own pods, PostgreSQL never from nginx."""

    def components(peers: list[dict]) -> set[str]:
        found = set()
        for peer in peers:
            selector = peer.get("podSelector", {})
            if "namespaceSelector" in peer:
                continue
            for component in ("nginx", "server", "gc", "migrate", "bucket", "postgresql", "s3"):
                if selects(selector, {**base, "app.kubernetes.io/component": component}):
                    found.add(component)
        return found

    base = {"app.kubernetes.io/name": "mlflow-stack", "app.kubernetes.io/instance": "mlflow"}
    nginx = allowed_sources(rendered, rendered.get("Deployment", "nginx"))
    assert {} in nginx or rendered.values.get("networkPolicy", {}).get("nginxFrom")
    server_peers = allowed_sources(rendered, rendered.get("Deployment", "server"))
    assert {} not in server_peers
    assert components(server_peers) == {"nginx", "gc"}
    extra = [p for p in server_peers if "namespaceSelector" in p]
    assert bool(extra) == rendered.values.get("metrics", {}).get("serviceMonitor", {}).get("enabled", False)
    assert allowed_sources(rendered, rendered.get("CronJob", "gc")) == []
    if rendered.has("StatefulSet", "postgresql"):
        peers = allowed_sources(rendered, rendered.get("StatefulSet", "postgresql"))
        assert components(peers) == {"server", "gc", "migrate", "bucket"}  # the server and the jobs
        assert "nginx" not in components(peers)
    if rendered.has("StatefulSet", "s3"):
        peers = allowed_sources(rendered, rendered.get("StatefulSet", "s3"))
        assert components(peers) == {"server", "nginx", "gc", "migrate", "bucket", "s3"}


def test_nginx_gets_the_stacks_config_with_cluster_names(rendered: Rendered) -> None:
    config = rendered.get("ConfigMap", "nginx")["data"]
    conf = config["nginx.conf"]
    assert "mlflow-server:5000;" not in conf
    assert "default mlflow-mlflow-stack-server.mlflow.svc.cluster.local:5000;" in conf
    assert "include /etc/nginx/stack/resolver.conf;" in conf
    resolver = config["resolver.conf"]
    assert "resolver kube-dns.kube-system.svc.cluster.local valid=10s ipv6=off;" in resolver
    assert "127.0.0.11" not in resolver
    nginx = rendered.get("Deployment", "nginx")
    c = containers(nginx)[0]
    assert c["args"][:2] == ["-c", "/etc/nginx/stack/nginx.conf"]
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/etc/nginx/stack", "/tmp", "/srv/mlflow-ui"}
    assert int(c["securityContext"]["runAsUser"]) == 101
    # MLflow's UI bundle: the stack's `ui` job as an init container fills the
    # pod's volume, which nginx serves read-only (nginx/locations.conf).
    (ui,) = pod_template(nginx)["spec"]["initContainers"]
    assert ui["args"] == ["ui"] and ui["image"] == containers(rendered.get("Deployment", "server"))[-1]["image"]
    assert int(ui["securityContext"]["runAsUser"]) == 10001
    assert [(m["name"], m["mountPath"]) for m in ui["volumeMounts"]] == [("ui", "/ui")]
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/srv/mlflow-ui"]
    assert mount["name"] == "ui" and mount["readOnly"] is True
    assert "root /srv/mlflow-ui/current;" in config["locations.conf"]


def test_the_server_gets_every_secret_it_refuses_to_start_without(rendered: Rendered) -> None:
    """serve.py stops at start without these files (the AI gateway's key
    encryption passphrase and the webhook key among them): the server pod must
    mount each, and a generated webhook key must be a valid Fernet key."""
    needed = {"mlflow_db_password", "auth_db_password", "flask_secret_key", "kek_passphrase", "webhook_encryption_key"}
    for workload in rendered.workloads():
        if labels(workload)["app.kubernetes.io/component"] != "server":
            continue
        volume = next(v for v in pod_template(workload)["spec"]["volumes"] if v["name"] == "secrets")
        assert needed <= {i["key"] for i in volume["secret"]["items"]}, name_of(workload)
    values = generated_secret_values(rendered)
    if values:
        key = values["webhook_encryption_key"]
        assert len(key) == 44 and len(base64.urlsafe_b64decode(key)) == 32, key


def test_bundled_postgresql_admits_every_server_pool_at_its_peak(rendered: Rendered) -> None:
    """Each server worker's pool can hold pool + overflow connections; the
    bundled database must admit all of them at once with room to spare
    (the auth store, the jobs), or the request that needs one more fails."""
    if not rendered.has("StatefulSet", "postgresql"):
        return
    server = rendered.get("Deployment", "server")
    env = env_of(containers(server, init=False)[0])
    hpa = rendered.of_kind("HorizontalPodAutoscaler")
    pods = hpa[0]["spec"]["maxReplicas"] if hpa else server["spec"]["replicas"]
    per_worker = int(env["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"]) + int(env["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"])
    peak = pods * int(env["MLFLOW_WORKERS"]) * per_worker
    args = containers(rendered.get("StatefulSet", "postgresql"))[0]["args"]
    limit = int(next(a.split("=", 1)[1] for a in args if a.startswith("max_connections=")))
    assert limit >= peak + 40, (limit, peak)
