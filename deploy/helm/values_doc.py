"""Write the values table of mlflow-stack/README.md from values.yaml's comments.

A `# -- text` comment documents the key on the next line (one line of text).
A documented key that holds a map covers its whole subtree; every other key
must be documented, or this fails naming it. The table replaces what lies
between `<!-- values:begin -->` and `<!-- values:end -->` in the README.

    python3 deploy/helm/values_doc.py           # rewrite the README's table
    python3 deploy/helm/values_doc.py --check   # exit 1 if the README is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parent / "mlflow-stack"
VALUES = CHART_DIR / "values.yaml"
README = CHART_DIR / "README.md"
BEGIN = "<!-- values:begin -->"
END = "<!-- values:end -->"
DOC = re.compile(r"^(\s*)# -- (.+)$")
KEY = re.compile(r"^(\s*)([A-Za-z0-9_.-]+):(\s|$)")


@dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: str
    description: str


def documented_keys(text: str) -> dict[str, str]:
    """Dotted key path -> its `# --` description, in file order."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing maps
    pending: str | None = None
    for line in text.splitlines():
        doc = DOC.match(line)
        if doc:
            pending = doc.group(2).strip()
            continue
        key = KEY.match(line)
        if not key:
            if line.strip() and not line.lstrip().startswith(("#", "-")):
                pending = None
            continue
        indent = len(key.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key.group(2)])
        stack.append((indent, key.group(2)))
        if pending:
            docs[path] = pending
        pending = None
    return docs


def type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


def rows(values: dict[str, Any], docs: dict[str, str]) -> tuple[list[Row], list[str]]:
    """Table rows in file order, and the keys nothing documents."""
    found: list[Row] = []
    undocumented: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in docs:
                continue
            if isinstance(value, dict) and value:
                walk(value, f"{path}.")
            else:
                undocumented.append(path)

    walk(values, "")
    for path, text in docs.items():
        value: Any = values
        for part in path.split("."):
            value = value[part]
        default = json.dumps(value, separators=(", ", ": "))
        found.append(Row(path, type_of(value), default, text))
    return found, undocumented


def table(found: list[Row]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    lines += [f"| `{r.key}` | {r.type} | `{cell(r.default)}` | {cell(r.description)} |" for r in found]
    return "\n".join(lines)


def render_readme(readme: str, body: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"{README}: the markers {BEGIN} and {END} are missing")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if the README's table is stale")
    args = parser.parse_args()

    text = VALUES.read_text()
    found, undocumented = rows(yaml.safe_load(text), documented_keys(text))
    if undocumented:
        print("values.yaml: keys without a `# --` comment: " + ", ".join(undocumented), file=sys.stderr)
        return 1
    current = README.read_text()
    wanted = render_readme(current, table(found))
    if wanted == current:
        print(f"{README.name}: values table up to date ({len(found)} keys)")
        return 0
    if args.check:
        print(f"{README.name}: values table is stale: run python3 deploy/helm/values_doc.py", file=sys.stderr)
        return 1
    README.write_text(wanted)
    print(f"{README.name}: values table written ({len(found)} keys)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
