"""git holds sources only: fail when a tracked file is generated output.

Checks `git ls-files` (what a clone gets) against:

- patterns of generated files: run stores (mlruns/), build metadata
  (*.egg-info), caches, virtualenvs, test logs, backups, benchmark output
  (bench/results/);
- raw data under docs/: every file there that is not Markdown must be linked
  from a tracked Markdown file or script (an image or a results file the docs
  cite), so forgotten dumps can't pile up;
- a .dockerignore beside every Dockerfile, so build contexts never carry
  caches or run stores.

Usage: python3 .ci/check_tree.py   (from anywhere in the repository)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

GENERATED = (
    (re.compile(r"(^|/)mlruns/"), "an MLflow run store"),
    (re.compile(r"(^|/)mlartifacts/"), "an MLflow artifact store"),
    (re.compile(r"\.egg-info/"), "build metadata"),
    (re.compile(r"(^|/)(build|dist)/"), "a build output folder"),
    (re.compile(r"(^|/)__pycache__/|\.py[co]$"), "Python bytecode"),
    (re.compile(r"(^|/)\.(pytest|ruff|mypy)_cache/"), "a tool cache"),
    (re.compile(r"(^|/)\.venv[^/]*/"), "a virtualenv"),
    (re.compile(r"^tests/\.(logs|artifacts)/"), "test output"),
    (re.compile(r"^backups/"), "a backup"),
    (re.compile(r"^bench/results/"), "benchmark output (cite it from docs/ or leave it out)"),
    (re.compile(r"(^|/)\.env$"), "local settings (secrets)"),
    (re.compile(r"\.(db|sqlite|log)$"), "a database or log file"),
)


def tracked(root: Path) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True, text=True).stdout
    return [p for p in out.split("\0") if p and (root / p).exists()]


def generated_problems(files: list[str]) -> list[str]:
    problems = []
    for path in files:
        for pattern, what in GENERATED:
            if pattern.search(path):
                problems.append(f"{path}: {what}, not a source")
                break
    return problems


def uncited_docs_files(root: Path, files: list[str]) -> list[str]:
    """Non-Markdown files under docs/ that no tracked text file links to."""
    texts = [
        (root / p).read_text(errors="replace") for p in files if p.endswith((".md", ".py")) or p.startswith("scripts/")
    ]
    problems = []
    for path in files:
        if not path.startswith("docs/") or path.endswith(".md"):
            continue
        name = PurePosixPath(path).name
        if not any(name in text for text in texts):
            problems.append(f"{path}: nothing links to it (move it to bench/results/ or delete it)")
    return problems


def missing_dockerignore(files: list[str]) -> list[str]:
    present = set(files)
    problems = []
    for path in files:
        if PurePosixPath(path).name == "Dockerfile":
            ignore = str(PurePosixPath(path).parent / ".dockerignore")
            if ignore not in present:
                problems.append(f"{path}: no {ignore} beside it")
    return problems


def main() -> int:
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], check=True, capture_output=True, text=True)
    root = Path(top.stdout.strip())
    files = tracked(root)
    problems = generated_problems(files) + uncited_docs_files(root, files) + missing_dockerignore(files)
    for p in problems:
        print(f"check_tree: {p}", file=sys.stderr)
    if problems:
        print(f"check_tree: {len(problems)} problem(s) in {len(files)} tracked files", file=sys.stderr)
        return 1
    print(f"check_tree: {len(files)} tracked files, sources only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
