"""The README's values table is generated from values.yaml's comments
(deploy/helm/values_doc.py) and fails when the two drift."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import yaml
from chart import CHART_DIR, HELM_DIR

SCRIPT = HELM_DIR / "values_doc.py"


def load_script():
    spec = importlib.util.spec_from_file_location("values_doc", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["values_doc"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_readme_table_matches_values() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_value_is_documented_and_in_the_table() -> None:
    values_doc = load_script()
    text = (CHART_DIR / "values.yaml").read_text()
    rows, undocumented = values_doc.rows(yaml.safe_load(text), values_doc.documented_keys(text))
    assert not undocumented
    readme = (CHART_DIR / "README.md").read_text()
    for row in rows:
        assert f"| `{row.key}` |" in readme, row.key
    assert len(rows) > 80


def test_an_undocumented_key_is_caught() -> None:
    values_doc = load_script()
    text = "a:\n  # -- documented\n  b: 1\n  c: 2\n# -- a map documented as a whole\nd:\n  e: 3\n"
    rows, undocumented = values_doc.rows(yaml.safe_load(text), values_doc.documented_keys(text))
    assert [r.key for r in rows] == ["a.b", "d"]
    assert undocumented == ["a.c"]
    assert values_doc.table(rows).splitlines()[2] == "| `a.b` | int | `1` | documented |"
