"""The chart renders with Helm's engine: the defaults, every example, and the
combinations that can't work fail with a reason instead."""

from __future__ import annotations

from collections import Counter

import pytest
from chart import CHART_DIR, NAMESPACE, Rendered, labels, merge, render


def test_every_scenario_renders_its_parts(renders: dict[str, Rendered]) -> None:
    assert {"default", "external", "trial", "irsa"} <= set(renders)
    for name, rendered in renders.items():
        kinds = Counter(o["kind"] for o in rendered.objects)
        print(f"{name}: {len(rendered.objects)} objects {dict(sorted(kinds.items()))}")
        # The parts every set-up has: the server, nginx, gc.
        assert rendered.has("Deployment", "server") and rendered.has("Deployment", "nginx"), name
        assert rendered.has("Service", "server") and rendered.has("Service", "nginx"), name
        assert rendered.has("CronJob", "gc"), name


def test_every_object_is_named_into_the_release_namespace(rendered: Rendered) -> None:
    for obj in rendered.objects:
        assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]
        assert labels(obj).get("app.kubernetes.io/instance") == "mlflow", obj["metadata"]["name"]


def test_bundled_stores_only_in_the_trial(renders: dict[str, Rendered]) -> None:
    for name, rendered in renders.items():
        bundled = name == "trial"
        assert rendered.has("StatefulSet", "postgresql") == bundled, name
        assert rendered.has("StatefulSet", "s3") == bundled, name


def test_exposure_is_the_users_choice(renders: dict[str, Rendered]) -> None:
    assert renders["external"].of_kind("Ingress") and not renders["external"].of_kind("HTTPRoute")
    assert renders["irsa"].of_kind("HTTPRoute") and not renders["irsa"].of_kind("Ingress")
    assert not renders["default"].of_kind("Ingress") and not renders["default"].of_kind("HTTPRoute")
    for name in ("external", "irsa"):
        route = (renders[name].of_kind("Ingress") + renders[name].of_kind("HTTPRoute"))[0]
        text = str(route["spec"])
        assert "mlflow-mlflow-stack-nginx" in text and "server" not in text.replace("-nginx", ""), name


def test_optional_objects_follow_their_switches(renders: dict[str, Rendered]) -> None:
    ext = renders["external"]
    assert ext.of_kind("HorizontalPodAutoscaler") and "replicas" not in ext.get("Deployment", "server")["spec"]
    assert ext.of_kind("ServiceMonitor")
    assert not renders["default"].of_kind("HorizontalPodAutoscaler")
    assert not renders["default"].of_kind("ServiceMonitor")
    assert renders["default"].has("PodDisruptionBudget", "server")
    assert not renders["trial"].of_kind("PodDisruptionBudget")
    # No bucket job when the operator manages the bucket.
    assert not ext.has("Job", "bucket") and renders["irsa"].has("Job", "bucket")


def test_helm_lint_finds_no_error() -> None:
    import helm_python as helm

    for values in ({}, {"postgresql": {"bundled": {"enabled": True}}, "server": {"replicas": 1}}):
        report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems and not report.get("errors"), report


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"s3": {"bundled": {"enabled": True}}}, "needs s3.staticCredentials=true"),
        ({"s3": {"staticCredentials": True}}, "needs secrets.existingSecret"),
        ({"postgresql": {"bundled": {"enabled": True}}}, "server.replicas must be 1"),
        ({"server": {"jobExecution": True, "replicas": 1, "autoscaling": {"enabled": True}}}, "must be 1"),
        ({"image": {"tag": "latest"}}, "set an exact tag"),
        ({"nginx": {"image": {"tag": ""}}}, "set an exact tag"),
        ({"ingress": {"enabled": True}}, "ingress.enabled needs ingress.hosts"),
        ({"httpRoute": {"enabled": True}}, "needs httpRoute.parentRefs"),
        ({"postgresql": {"caCert": {"configMap": "a", "secret": "b"}}}, "not both"),
    ],
)
def test_impossible_settings_fail_with_a_reason(values: dict, message: str) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match=message.replace(".", r"\.")):
        render(values)


def test_upgrade_renders_the_same_objects(renders: dict[str, Rendered]) -> None:
    """No template depends on install vs upgrade: `helm template` shows what an upgrade applies."""
    for name in ("default", "trial"):
        upgraded = render(merge({}, renders[name].values), name, upgrade=True)
        before = sorted((o["kind"], o["metadata"]["name"]) for o in renders[name].objects)
        after = sorted((o["kind"], o["metadata"]["name"]) for o in upgraded.objects)
        assert before == after, name
