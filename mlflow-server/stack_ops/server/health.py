"""Health check for the mlflow-server container: no curl needed."""

from __future__ import annotations

import sys
import urllib.request

URL = "http://127.0.0.1:5000/health"


def main() -> int:
    try:
        with urllib.request.urlopen(URL, timeout=12) as resp:
            body = resp.read(64).decode(errors="replace").strip()
    except OSError as e:
        print(f"mlflow-server unhealthy: {URL}: {e}")
        return 1
    if body != "OK":
        print(f"mlflow-server unhealthy: {URL} answered {body!r}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
