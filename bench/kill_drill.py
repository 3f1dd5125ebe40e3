"""A drill against a running stack: do answers survive a server killed mid-answer?

Run from the repository, with the test venv (scripts/test creates it):

    .venv-tests/bin/python bench/kill_drill.py --project mlflow-stack kill --kills 25 --writers 16 --every 7
    .venv-tests/bin/python bench/kill_drill.py --project mlflow-stack gap --clients 12 --seconds 30

`kill`: WRITERS clients call log_batch through nginx (MLflow's own client,
with its retries) while one uvicorn worker of the mlflow-server container is
SIGKILLed every EVERY seconds (uvicorn starts a new one). It prints how
many batches were acknowledged and every client error by kind: a 502 the
client retried is not an error; a body that ended early (`IncompleteRead`)
is. It then checks that every acknowledged point is stored.

`gap`: inside the mlflow-server container, CLIENTS raw keep-alive
connections call log_batch on 127.0.0.1:5000 and time how long each answer's
body arrives after its headers: the window in which a kill leaves half an
answer (docs/replicas.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from stack import Stack  # noqa: E402

# uvicorn's workers (multiprocessing spawn children), not its resource tracker.
FIND_WORKERS = (
    'for p in /proc/[0-9]*; do c=$(tr "\\0" " " < $p/cmdline 2>/dev/null); '
    'case "$c" in *resource_tracker*) ;; *spawn_main*) echo ${p#/proc/};; esac; done'
)

GAP_PROBE = r"""
import base64, json, socket, sys, threading, time
import os
user, run_id, clients, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
auth = b"Basic " + base64.b64encode(f"{user}:{os.environ['DRILL_PASSWORD']}".encode())
gaps, alone, stop = [], [], time.monotonic() + seconds

def client(i):
    s = socket.create_connection(("127.0.0.1", 5000))
    step = 0
    while time.monotonic() < stop:
        points = [
            {"key": f"gap{i}", "value": float(k), "timestamp": 1700000000000 + k, "step": k}
            for k in range(step, step + 10)
        ]
        body = json.dumps({"run_id": run_id, "metrics": points}).encode()
        step += 10
        s.sendall(
            b"POST /api/2.0/mlflow/runs/log-batch HTTP/1.1\r\nHost: mlflow-server:5000\r\n"
            + b"Authorization: " + auth + b"\r\nContent-Type: application/json\r\n"
            + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        at = time.monotonic()
        head, rest = buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
        if len(rest) < length:
            alone.append(1)
        while len(rest) < length:
            rest += s.recv(65536)
        gaps.append(time.monotonic() - at)

threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
gaps.sort()
ms = lambda g: round(g * 1000, 3)
print(json.dumps({
    "answers": len(gaps), "headers_read_alone": len(alone), "gap_over_1ms": sum(g > 0.001 for g in gaps),
    "gap_mean_ms": ms(sum(gaps) / len(gaps)), "gap_p50_ms": ms(gaps[len(gaps) // 2]),
    "gap_p99_ms": ms(gaps[int(len(gaps) * 0.99)]), "gap_max_ms": ms(gaps[-1]), "req_s": round(len(gaps) / seconds, 1),
}))
"""


def connect(project: str) -> tuple[Stack, str, str, str]:
    stack = Stack.attach(project)
    user = stack.compose("exec", "-T", "mlflow-server", "printenv", "MLFLOW_ADMIN_USERNAME").stdout.strip()
    password = stack.secret("mlflow_admin_password")
    container = stack.running()["mlflow-server"]
    return stack, user, password, container


def new_run(stack: Stack, name: str) -> tuple[object, str]:
    from mlflow import MlflowClient

    client = MlflowClient(stack.url)
    return client, client.create_run(client.create_experiment(f"{name}-{time.time_ns()}")).info.run_id


def kill(args, stack: Stack, container: str) -> dict:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client, run_id = new_run(stack, "kill-drill")
    acknowledged: dict[str, list[int]] = {f"w{i}": [] for i in range(args.writers)}
    errors: dict[str, int] = {}
    stop = threading.Event()

    def writer(key: str) -> None:
        own = MlflowClient(stack.url)
        step = 0
        while not stop.is_set():
            steps = range(step, step + 10)
            try:
                own.log_batch(run_id, metrics=[Metric(key, float(s), 1_700_000_000_000 + s, s) for s in steps])
            except Exception as e:  # noqa: BLE001 (every client error is counted)
                kind = "IncompleteRead" if "IncompleteRead" in repr(e) else repr(e)[:160]
                errors[kind] = errors.get(kind, 0) + 1
            else:
                acknowledged[key] += steps
            step += 10

    threads = [threading.Thread(target=writer, args=(key,)) for key in acknowledged]
    for t in threads:
        t.start()
    killed = 0
    started = time.monotonic()
    try:
        for _ in range(args.kills):
            time.sleep(args.every)
            workers = subprocess.run(
                ["docker", "exec", container, "sh", "-c", FIND_WORKERS], capture_output=True, text=True, check=True
            ).stdout.split()
            if workers:
                victim = random.choice(workers)
                subprocess.run(["docker", "exec", container, "sh", "-c", f"kill -9 {victim}"], check=True)
                killed += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    missing = 0
    for key, steps in acknowledged.items():
        stored = {m.step for m in client.get_metric_history(run_id, key)}
        missing += len(set(steps) - stored)
    return {
        "kills": killed,
        "seconds": round(time.monotonic() - started),
        "writers": args.writers,
        "acknowledged_batches": sum(len(s) for s in acknowledged.values()) // 10,
        "acknowledged_points_missing": missing,
        "client_errors": errors,
    }


def gap(args, stack: Stack, user: str, password: str, container: str) -> dict:
    _, run_id = new_run(stack, "gap-drill")
    out = subprocess.run(
        ["docker", "exec", "-i", "-e", "DRILL_PASSWORD", container, "python", "-"]
        + [user, run_id, str(args.clients), str(args.seconds)],
        input=GAP_PROBE,
        env={**os.environ, "DRILL_PASSWORD": password},  # not on a command line
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", default=os.environ.get("COMPOSE_PROJECT_NAME", "mlflow-stack"))
    sub = parser.add_subparsers(dest="drill", required=True)
    k = sub.add_parser("kill")
    k.add_argument("--kills", type=int, default=25)
    k.add_argument("--writers", type=int, default=16)
    k.add_argument("--every", type=float, default=7.0)
    g = sub.add_parser("gap")
    g.add_argument("--clients", type=int, default=12)
    g.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    stack, user, password, container = connect(args.project)
    os.environ["MLFLOW_TRACKING_USERNAME"] = user
    os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    result = kill(args, stack, container) if args.drill == "kill" else gap(args, stack, user, password, container)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
