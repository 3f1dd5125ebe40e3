"""Every rendered object is valid against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields are errors), for the oldest
Kubernetes the chart supports and the one Helm's engine renders for.

Custom resources (Gateway API HTTPRoute, prometheus-operator ServiceMonitor)
have no schema in kubernetes-validate; their required fields are checked here.
"""

from __future__ import annotations

import kubernetes_validate
import kubernetes_validate.utils
import pytest
from chart import Rendered, name_of

# The chart's kubeVersion floor (Chart.yaml), the version Helm's engine
# reports in .Capabilities when it renders offline, and the newest the
# validator ships.
VERSIONS = ("1.30.0", "1.36.0", kubernetes_validate.utils.latest_version())
CUSTOM_KINDS = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}


def test_the_validator_knows_these_versions() -> None:
    known = kubernetes_validate.utils.all_versions()
    for version in VERSIONS:
        assert any(v.startswith(version.rsplit(".", 1)[0]) for v in known), (version, known)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates(rendered: Rendered, version: str) -> None:
    errors = []
    checked = 0
    for obj in rendered.objects:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            checked += 1
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{name_of(obj)}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{name_of(obj)}: no schema ({e})")
    print(f"{rendered.scenario} @ {version}: {checked} objects valid")
    assert not errors, "\n".join(errors)
    assert checked > 10


def test_custom_resources_have_their_required_fields(renders: dict[str, Rendered]) -> None:
    route = renders["irsa"].of_kind("HTTPRoute")[0]
    for ref in route["spec"]["parentRefs"]:
        assert ref["name"]
    for rule in route["spec"]["rules"]:
        for backend in rule["backendRefs"]:
            assert backend["name"].endswith("-nginx") and isinstance(backend["port"], int)
    monitor = renders["external"].of_kind("ServiceMonitor")[0]
    assert monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "server"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("http", "/metrics", "30s")
    # /metrics answers only the scrape token: the monitor sends it from the stack's Secret.
    assert endpoint["authorization"]["type"] == "Bearer"
    assert endpoint["authorization"]["credentials"]["key"] == "metrics_scrape_token"
    server = next(o for o in renders["external"].of_kind("Deployment") if o["metadata"]["name"].endswith("-server"))
    mounted = {v["secret"]["secretName"] for v in server["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert endpoint["authorization"]["credentials"]["name"] in mounted
