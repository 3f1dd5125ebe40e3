"""Render the chart with Helm's own engine (helm-python-sdk) and walk the result.

No cluster is involved: `lookup` answers empty (a fresh install), and
`.Capabilities` are Helm's defaults. Scenarios are the default values plus
every values file in deploy/helm/examples/.

    python deploy/helm/tests/chart.py --out DIR   # write each scenario's manifests to DIR/<scenario>/
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HELM_DIR = Path(__file__).resolve().parents[1]
CHART_DIR = HELM_DIR / "mlflow-stack"
EXAMPLES_DIR = HELM_DIR / "examples"
REPO_ROOT = HELM_DIR.parents[1]
RELEASE = "mlflow"
NAMESPACE = "mlflow"
POD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob", "DaemonSet", "ReplicaSet", "Pod"}


@dataclass
class Rendered:
    """One render: the manifests by template path, and the objects in them."""

    scenario: str
    values: dict[str, Any]
    files: dict[str, str]
    objects: list[dict[str, Any]] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, component: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if labels(o).get("app.kubernetes.io/component") == component]
        assert len(found) == 1, f"{self.scenario}: expected one {kind} of component {component}, found {len(found)}"
        return found[0]

    def has(self, kind: str, component: str) -> bool:
        return any(labels(o).get("app.kubernetes.io/component") == component for o in self.of_kind(kind))

    def workloads(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] in POD_KINDS]


def labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def annotations(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata", {}).get("annotations") or {}


def pod_template(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod template (metadata + spec) of a workload."""
    if obj["kind"] == "Pod":
        return obj
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def containers(obj: dict[str, Any], init: bool = True) -> list[dict[str, Any]]:
    spec = pod_template(obj)["spec"]
    found = list(spec.get("containers", []))
    if init:
        found += spec.get("initContainers", [])
    return found


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def name_of(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def scenarios() -> dict[str, dict[str, Any]]:
    """The default values and every example values file, by name."""
    found: dict[str, dict[str, Any]] = {"default": {}}
    for path in sorted(EXAMPLES_DIR.glob("*.yaml")):
        found[path.stem] = load_values(path)
    return found


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Values as Helm coalesces them: nested maps merge, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def render(values: dict[str, Any] | None = None, scenario: str = "custom", *, upgrade: bool = False) -> Rendered:
    """Render the chart like `helm install` (or `helm upgrade`) would, offline."""
    import helm_python as helm

    with helm.Chart.load(CHART_DIR) as chart:
        files = chart.render(
            values or {},
            name=RELEASE,
            namespace=NAMESPACE,
            is_install=not upgrade,
            is_upgrade=upgrade,
        )
    rendered = Rendered(scenario=scenario, values=values or {}, files=files)
    for path, text in sorted(files.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                rendered.objects.append(doc)
    return rendered


def walk(value: Any) -> Iterator[Any]:
    """Every scalar in a nested structure."""
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)
    else:
        yield value


def selects(selector: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) selects these labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if pod_labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        present = expr["key"] in pod_labels
        value = pod_labels.get(expr["key"])
        op = expr["operator"]
        if op == "In" and value not in expr["values"]:
            return False
        if op == "NotIn" and value in expr.get("values", []):
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def write(rendered: Rendered, out: Path) -> list[Path]:
    """Write a render's manifests as out/<template>.yaml (NOTES.txt left out)."""
    written = []
    out.mkdir(parents=True, exist_ok=True)
    for path, text in sorted(rendered.files.items()):
        if not path.endswith(".yaml") or not text.strip():
            continue
        target = out / Path(path).name
        target.write_text(text)
        written.append(target)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write each scenario's manifests to")
    args = parser.parse_args()
    for scenario, values in scenarios().items():
        rendered = render(values, scenario)
        written = write(rendered, args.out / scenario)
        print(f"{scenario}: {len(rendered.objects)} objects in {len(written)} files -> {args.out / scenario}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
