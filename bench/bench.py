"""Benchmark the stack against a plain `mlflow server`, side by side, in one run.

Brings up its own copy of the stack (own project name, free port, empty
volumes) plus the baseline from bench/compose.bench.yaml, runs every
workload against both minutes apart, prints a table with each target's
PASS/MISS, writes JSON and a chart, and removes its copy (unless --keep).
Host side: Python standard library only; the load runs in the `bench`
container (bench/load.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from quantiles import pct

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from stack import ROOT, Stack, free_port, last_json  # noqa: E402  (scripts/stack.py)

STACK_SERVICES = ("nginx", "gc")  # and everything they depend on; not the trainer

SIZES = {
    "full": {
        "log_seconds": 60,
        "log_big_seconds": 30,
        "log_rounds": 3,
        "settle_s": 180,
        "clients": 20,
        "runs": 25000,
        "points": 100000,
        "search_repeat": 20,
        "history_repeat": 5,
        "ui_repeat": 3,
        "artifact_mib": 1024,
        "big_upload_mib": 5120,
        "parallel_clients": 20,
        "parallel_mib": 100,
        "artifact_rounds": 3,
    },
    "smoke": {
        "log_seconds": 2,
        "log_big_seconds": 2,
        "log_rounds": 1,
        "settle_s": 10,
        "clients": 4,
        "runs": 200,
        "points": 1000,
        "search_repeat": 3,
        "history_repeat": 2,
        "ui_repeat": 1,
        "artifact_mib": 8,
        "big_upload_mib": 16,
        "parallel_clients": 4,
        "parallel_mib": 4,
        "artifact_rounds": 1,
    },
}
WORKLOADS = (
    "logging",
    "search",
    "ui",
    "artifacts",
    "parallel",
    "runs_load",
    "upload",
    "startup",
    "footprint",
    "own_memory",
)


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench(Stack):
    """The benchmark's copy of the stack (scripts/stack.py) plus its load generator."""

    def load(self, *args: str, extra: tuple[str, ...] = ()) -> dict:
        """One load.py workload in the `bench` container: its JSON result."""
        return last_json(self.compose("run", "--rm", "-T", *extra, "bench", *args, timeout=3600).stdout)

    def timed_up(self, *services: str) -> float:
        return self.up(*services, timeout=600)


def cgroup_dir(container_id: str) -> Path | None:
    """The container's memory cgroup on the host (cgroup v1 or v2), or None."""
    full = subprocess.run(
        ["docker", "inspect", "--format", "{{.Id}}", container_id], capture_output=True, text=True
    ).stdout.strip()
    for base in (Path("/sys/fs/cgroup/memory/docker") / full, Path(f"/sys/fs/cgroup/system.slice/docker-{full}.scope")):
        if (base / "memory.stat").exists():
            return base
    return None


def memory_bytes(container_id: str) -> dict[str, int]:
    """What `docker stats` shows (usage minus inactive file cache) and the
    anonymous memory (the processes' own heap), from the container's cgroup."""
    base = cgroup_dir(container_id)
    if base is not None:
        stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
        if (base / "memory.usage_in_bytes").exists():  # cgroup v1
            usage = int((base / "memory.usage_in_bytes").read_text())
            return {"stats": usage - int(stat.get("total_inactive_file", 0)), "anon": int(stat.get("total_rss", 0))}
        usage = int((base / "memory.current").read_text())
        return {"stats": usage - int(stat.get("inactive_file", 0)), "anon": int(stat.get("anon", 0))}
    out = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", container_id], capture_output=True, text=True
    ).stdout
    value = out.split("/")[0].strip()
    units = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "B": 1}
    for unit, mult in units.items():
        if value.endswith(unit):
            n = int(float(value[: -len(unit)]) * mult)
            return {"stats": n, "anon": n}
    return {"stats": 0, "anon": 0}


def drop_file_cache(container_id: str) -> bool:
    """Ask the kernel to reclaim what it can of the container's memory: its
    file cache (cgroup v2 memory.reclaim, v1 memory.force_empty). The
    processes' own memory stays (there is no swap to put it in). Needs root
    on the host; False when the kernel or the user can't."""
    base = cgroup_dir(container_id)
    if base is None:
        return False
    for name, value in (("memory.reclaim", str(64 << 30)), ("memory.force_empty", "0")):
        if not (base / name).exists():
            continue  # the other cgroup version, or a kernel older than the file
        try:
            (base / name).write_text(value)
            return True
        except OSError as e:
            if e.errno == errno.EAGAIN:  # memory.reclaim: it took all it could, less than asked
                return True
            return False  # not allowed: not root
    return False


def cpu_ns(container_id: str) -> int:
    """CPU time the container's processes have used so far (ns, its cgroup's
    cpuacct.usage, or cpu.stat on cgroup v2); -1 when unreadable."""
    full = subprocess.run(
        ["docker", "inspect", "--format", "{{.Id}}", container_id], capture_output=True, text=True
    ).stdout.strip()
    v1 = Path("/sys/fs/cgroup/cpuacct/docker") / full / "cpuacct.usage"
    if v1.exists():
        return int(v1.read_text())
    v2 = Path(f"/sys/fs/cgroup/system.slice/docker-{full}.scope/cpu.stat")
    if v2.exists():
        stat = dict(line.split() for line in v2.read_text().splitlines())
        return int(stat["usage_usec"]) * 1000
    return -1


def cpu_by_service(c: Bench) -> dict[str, int]:
    """Each service's CPU time so far (cpu_ns), summed over its running
    containers: every replica of mlflow-server counts. -1 when one of them
    is unreadable."""
    out: dict[str, int] = {}
    for cont in c.containers():
        if cont.get("State") != "running":
            continue
        ns, svc = cpu_ns(cont["ID"]), cont["Service"]
        out[svc] = -1 if ns < 0 or out.get(svc, 0) < 0 else out.get(svc, 0) + ns
    return dict(sorted(out.items()))


def cpu_ms_per_request(before: dict[str, int], after: dict[str, int], requests: int) -> dict[str, float]:
    """CPU milliseconds each service spent per request between two
    cpu_by_service() snapshots (services using under 0.05 ms are left out)."""
    out = {}
    for svc, t0 in before.items():
        t1 = after.get(svc, -1)
        if t0 >= 0 and t1 >= t0 and requests:
            ms = (t1 - t0) / 1e6 / requests
            if ms >= 0.05:
                out[svc] = round(ms, 2)
    return out


def memory_by_service(c: Bench) -> dict[str, dict[str, int]]:
    """Each service's memory, both ways memory_bytes() reads it: the sum of
    its containers (mlflow-server has one per replica)."""
    out: dict[str, dict[str, int]] = {}
    for container in c.containers():
        if container.get("State") != "running":
            continue
        m = memory_bytes(container["ID"])
        total = out.setdefault(container["Service"], {"stats": 0, "anon": 0})
        total["stats"] += m["stats"]
        total["anon"] += m["anon"]
    return dict(sorted(out.items()))


def footprint(c: Bench) -> dict[str, int]:
    """Each container's memory as `docker stats` shows it."""
    return {svc: m["stats"] for svc, m in memory_by_service(c).items()}


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path` (a volume's directory on the host)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def written_bytes(container_id: str) -> int:
    """Bytes the container's processes have sent to storage (/proc/PID/io
    write_bytes, summed over the processes in its cgroup)."""
    full = subprocess.run(
        ["docker", "inspect", "--format", "{{.Id}}", container_id], capture_output=True, text=True
    ).stdout.strip()
    for procs in (
        Path("/sys/fs/cgroup/memory/docker") / full / "cgroup.procs",
        Path(f"/sys/fs/cgroup/system.slice/docker-{full}.scope/cgroup.procs"),
    ):
        if procs.exists():
            total = 0
            for pid in procs.read_text().split():
                try:
                    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
                    total += int(io["write_bytes"])
                except (OSError, KeyError, ValueError):
                    pass
            return total
    return -1


class Sampler(threading.Thread):
    """Samples containers' memory (and optionally a directory's size) twice a second until stopped."""

    def __init__(self, container_ids: dict[str, str], directory: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.cids, self.directory = container_ids, directory
        self.samples: dict[str, list[dict[str, int]]] = {name: [] for name in container_ids}
        self.dir_peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            for name, cid in self.cids.items():
                self.samples[name].append(memory_bytes(cid))
            if self.directory is not None:
                self.dir_peak = max(self.dir_peak, tree_bytes(self.directory))
            self.done.wait(0.5)

    def stop(self) -> dict[str, dict[str, int]]:
        self.done.set()
        self.join()
        return {
            name: {
                "peak_stats": max(s["stats"] for s in samples),
                "peak_anon": max(s["anon"] for s in samples),
                "samples": len(samples),
            }
            for name, samples in self.samples.items()
        }


GROWTH_TARGET_MB = 50  # mlflow-server and nginx each grow less than this during the 5 GiB upload


def big_upload(c: Bench, mib: int) -> dict:
    """A `mib` upload through the stack while sampling mlflow-server's and
    nginx's memory and the size of the server's /tmp volume (where MLflow's
    proxy spools uploads), plus the bytes the server's processes write."""
    running = c.running()
    cids = {name: running[name] for name in ("mlflow-server", "nginx")}
    cid = cids["mlflow-server"]
    before = {name: memory_bytes(i) for name, i in cids.items()}
    tmp_volume = Path(
        subprocess.run(
            ["docker", "volume", "inspect", "--format", "{{.Mountpoint}}", f"{c.project}_server-tmp"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    written_before, tmp_before = written_bytes(cid), tree_bytes(tmp_volume)
    sampler = Sampler(cids, tmp_volume)
    sampler.start()
    say(f"upload {mib} MiB through the stack")
    ok, err, res = True, None, {}
    try:
        res = c.load("upload", "stack", "--mib", str(mib))
    except RuntimeError as e:
        ok, err = False, str(e)[-500:]
    peaks = sampler.stop()
    memory = {}
    for name, m in peaks.items():
        m.update(
            {
                "before_stats": before[name]["stats"],
                "before_anon": before[name]["anon"],
                "growth_stats_mb": round((m["peak_stats"] - before[name]["stats"]) / 1e6, 1),
                "growth_anon_mb": round((m["peak_anon"] - before[name]["anon"]) / 1e6, 1),
            }
        )
        memory[name] = m
    disk = {
        "server_tmp_peak_bytes": max(0, sampler.dir_peak - tmp_before),  # growth: its config files stay
        "server_written_bytes": written_bytes(cid) - written_before if written_before >= 0 else None,
    }
    say(
        f"  ok={ok}, {res.get('upload_mb_s')} MB/s, memory growth mlflow-server "
        f"{memory['mlflow-server']['growth_stats_mb']} MB, nginx {memory['nginx']['growth_stats_mb']} MB; "
        f"server /tmp peak {disk['server_tmp_peak_bytes']} B, written {disk['server_written_bytes']} B"
    )
    # "memory" stays the server's (earlier results files have only that); nginx's is beside it.
    return {
        "mib": mib,
        "ok": ok,
        "error": err,
        **res,
        "memory": memory["mlflow-server"],
        "memory_nginx": memory["nginx"],
        "disk": disk,
    }


def own_memory(c: Bench, size: dict, seeded: dict) -> dict:
    """The stack's memory after its own share of the load alone. In the full
    run the baseline shares the stack's PostgreSQL and S3 store, so their
    file cache after the load also holds the baseline's tables, WAL and
    artifacts, and the direct-S3 transfers' objects, and PostgreSQL keeps the
    baseline's connections. Here the baseline stops, the stack's containers'
    file cache is dropped, the stack's half of the workloads runs again
    (logging, search and history, artifacts, parallel downloads, the model
    load and the big upload), and memory is read at the same point as the
    full run's footprint."""
    c.compose("stop", "baseline")
    running = [x for x in c.containers() if x.get("State") == "running" and x["Service"] != "baseline"]
    dropped = {x["Name"]: drop_file_cache(x["ID"]) for x in running}  # every replica of mlflow-server
    emptied = memory_by_service(c)
    done = ", ".join(name for name, ok in dropped.items() if ok) or "none"
    say(f"own memory: baseline stopped, file cache dropped in {done}")
    do_logging(c, size, ("stack",))
    do_search(c, size, ("stack",), seeded)
    do_artifacts(c, size, ("stack",))
    do_parallel(c, size, ("stack",))
    say("runs:/ model load, stack")
    c.load("runs-load", "stack")
    big_upload(c, size["big_upload_mib"])
    mem = memory_by_service(c)
    total = sum(m["stats"] for m in mem.values())
    say(f"  stack after its own load: {total / (1 << 30):.2f} GiB")
    return {
        "cache_dropped": dropped,
        "emptied": {svc: m["stats"] for svc, m in emptied.items()},
        "after_load": {svc: m["stats"] for svc, m in mem.items()},
        "after_load_anon": {svc: m["anon"] for svc, m in mem.items()},
        "stack_total_after_load": total,
        "stack_anon_after_load": sum(m["anon"] for m in mem.values()),
    }


def git_commit() -> str:
    """The checkout's commit, with `+changes` when files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "+changes"
    return commit or "unknown"


def machine() -> dict:
    def cmd(*args: str) -> str:
        return subprocess.run(args, capture_output=True, text=True).stdout.strip()

    mem = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    return {
        "nproc": os.cpu_count(),
        "mem_total_gib": round(int(mem.split()[1]) / (1 << 20), 1),
        "kernel": platform.release(),
        "docker": cmd("docker", "version", "--format", "{{.Server.Version}}"),
        "compose": cmd("docker", "compose", "version", "--short"),
        "compose_file": os.environ.get("COMPOSE_FILE", "compose.yaml"),
        "images": {
            k: os.environ.get(k, "(default)")
            for k in (
                "PYTHON_IMAGE",
                "POSTGRES_IMAGE",
                "NGINX_IMAGE",
                "MINIO_IMAGE",
                "SEAWEEDFS_IMAGE",
                "MLFLOW_SERVER_IMAGE",
            )
        },
    }


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def targets(r: dict) -> list[dict]:
    """Each target: what is compared, the measured value, PASS/MISS (or n/a when not measured)."""
    rows: list[dict] = []

    def add(name: str, value, goal: str, ok) -> None:
        rows.append(
            {
                "target": name,
                "value": value,
                "goal": goal,
                "result": "n/a" if ok is None else ("PASS" if ok else "MISS"),
            }
        )

    lg = r.get("logging", {})
    if lg:
        s, b = lg["stack"], lg["baseline"]
        q = ratio(s["req_per_s"], b["req_per_s"])
        add("logging 10/batch: req/s stack/baseline", q, ">= 1.2", q is not None and q >= 1.2)
        q = ratio(s["p99_ms"], b["p99_ms"])
        add("logging 10/batch: p99 stack/baseline", q, "<= 0.8", q is not None and q <= 0.8)
        if "baseline_1000" in lg:
            q = ratio(lg["stack_1000"]["req_per_s"], lg["baseline_1000"]["req_per_s"])
            add("logging 1000/batch: req/s stack/baseline", q, ">= 1.0", q is not None and q >= 1.0)
        worst = max(s["error_rate"], lg["stack_1000"]["error_rate"])
        add("logging: stack error rate", f"{worst:.3%}", "< 0.1%", worst < 0.001)
    ar = r.get("artifacts", {})
    if ar:
        q = ratio(ar["stack"]["upload_mb_s"], ar["s3"]["upload_mb_s"])
        add("artifact upload MB/s stack/direct-S3", q, ">= 0.9", q >= 0.9)
        q = ratio(ar["stack"]["download_mb_s"], ar["s3"]["download_mb_s"])
        add("artifact download MB/s stack/direct-S3", q, ">= 0.9", q >= 0.9)
    par = r.get("parallel", {})
    if par:
        q = ratio(par["stack"]["aggregate_mb_s"], par["s3"]["aggregate_mb_s"])
        n = par["stack"]["clients"]
        add(f"{n} parallel downloads: aggregate MB/s stack/direct-S3", q, ">= 0.8", q >= 0.8)
    rl = r.get("runs_load", {})
    if rl:
        s = rl["stack"]["seconds"]
        add("load_model(runs:/<id>/model) through nginx, s", s, "<= 2", s <= 2)
    up = r.get("upload", {})
    if up:
        disk = up.get("disk")
        if disk:
            peak = disk["server_tmp_peak_bytes"]
            add(f"{up['mib']} MiB upload: bytes on mlflow-server's disk", peak, "0", up["ok"] and peak == 0)
        for name, mem in (("mlflow-server", up["memory"]), ("nginx", up.get("memory_nginx"))):
            if mem:
                growth = mem["growth_stats_mb"]
                add(
                    f"{up['mib']} MiB upload: {name} memory growth MB",
                    growth,
                    f"< {GROWTH_TARGET_MB}",
                    up["ok"] and growth < GROWTH_TARGET_MB,
                )
    capped = r.get("upload_capped", {})  # results from before the direct artifact path
    if capped:
        add(
            f"{capped['mib']} MiB upload, server capped at idle+300 MB: MB/s",
            capped.get("upload_mb_s", 0),
            "succeeds",
            capped["ok"],
        )
    se = r.get("search", {})
    if se:
        q = ratio(se["stack"]["p95_ms"], se["baseline"]["p95_ms"]) if "baseline" in se else None
        add("search_runs 1000 of seeded exp: p95 stack/baseline", q, "<= 0.8", None if q is None else q <= 0.8)
        add(
            "search_runs 1000 of seeded exp: stack p95 s",
            round(se["stack"]["p95_ms"] / 1000, 3),
            "<= 0.8",
            se["stack"]["p95_ms"] <= 800,
        )
        if "history_baseline" in se:
            q = ratio(se["history_stack"]["p50_ms"], se["history_baseline"]["p50_ms"])
            add("metric history 100k points (MlflowClient): p50 stack/baseline", q, "<= 0.5", q <= 0.5)
    ui = r.get("ui", {})
    if ui and "baseline" in ui:
        for page in ("experiment", "chart"):
            q = ratio(ui["stack"][f"{page}_s"], ui["baseline"][f"{page}_s"])
            add(f"UI {page} page: time to usable stack/baseline", q, "<= 1.0", q <= 1.0)
    st = r.get("startup", {})
    if st:
        add("cold up --wait s", st["cold_s"], "<= 60", st["cold_s"] <= 60)
    fp = r.get("footprint", {})
    if fp:
        gib = round(fp["stack_total_after_load"] / (1 << 30), 2)
        add("idle memory, whole stack, after load GiB", gib, "<= 1.5", gib <= 1.5)
    return rows


def merge_rounds(rounds: list[dict]) -> dict:
    """One target's logging rounds as one measurement: calls and time summed,
    percentiles over every call's latency."""
    lat = [x for r in rounds for x in r.pop("latencies_ms")]
    n, err, secs = (sum(r[k] for r in rounds) for k in ("requests", "errors", "seconds"))
    cpu: dict[str, float] = {}
    for r in rounds:  # weighted by each round's calls
        for svc, ms in r.get("cpu_ms_per_req", {}).items():
            cpu[svc] = cpu.get(svc, 0.0) + ms * r["requests"] / max(1, n)
    return {
        "requests": n,
        "errors": err,
        "seconds": round(secs, 2),
        "req_per_s": round(n / secs, 2),
        "p50_ms": round(pct(lat, 0.5), 1),
        "p99_ms": round(pct(lat, 0.99), 1),
        "error_rate": round(err / n, 5) if n else 1.0,
        "stored_points_m0": sum(r["stored_points_m0"] for r in rounds),
        "expected_points_m0": sum(r["expected_points_m0"] for r in rounds),
        "clients": rounds[0]["clients"],
        "metrics_per_call": rounds[0]["metrics_per_call"],
        "rounds_req_per_s": [r["req_per_s"] for r in rounds],
        "cpu_ms_per_req": {svc: round(ms, 2) for svc, ms in sorted(cpu.items())},
    }


def cpu_idle(seconds: float = 2.0) -> float:
    """The machine's idle CPU share over `seconds` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(1, total1 - total0)


def settle(limit: float = 180, idle: float = 0.8) -> float:
    """Wait until the machine is quiet (two 2 s windows at >= 80% idle CPU, at
    most `limit` s): a server that has just started (the baseline's job
    runner imports MLflow in 8 processes) or a stack just recreated must not
    be measured while it still burns CPU. Says how long it waited."""
    t0, quiet = time.monotonic(), 0
    while time.monotonic() - t0 < limit and quiet < 2:
        quiet = quiet + 1 if cpu_idle() >= idle else 0
    waited = round(time.monotonic() - t0, 1)
    if quiet < 2:
        say(f"  machine still busy after {waited}s; measuring anyway")
    else:
        say(f"  waited {waited}s for a quiet machine")
    return waited


def do_logging(c: Bench, size: dict, tgts: tuple[str, ...]) -> dict:
    """Each batch size in `log_rounds` rounds; in each round every target in
    turn (order reversed every other round), so slow drifts of a noisy machine
    hit all targets alike. Each target gets its share of the seconds."""
    lg = {}
    for name, metrics, secs in (("", 10, size["log_seconds"]), ("_1000", 1000, size["log_big_seconds"])):
        rounds = size["log_rounds"]
        settle(size["settle_s"])
        share = max(1, round(secs / rounds))
        got: dict[str, list[dict]] = {tgt: [] for tgt in tgts}
        for i in range(rounds):
            for tgt in tgts if i % 2 == 0 else tgts[::-1]:
                say(f"logging: {size['clients']} clients x {metrics} metrics/call, {share}s, {tgt} (round {i + 1})")
                args = ("--clients", str(size["clients"]), "--seconds", str(share), "--metrics", str(metrics))
                cpu0 = cpu_by_service(c)
                res = c.load("logging", tgt, *args)
                res["cpu_ms_per_req"] = cpu_ms_per_request(cpu0, cpu_by_service(c), res["requests"])
                got[tgt].append(res)
                say(f"  {res['req_per_s']} req/s, p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, err {res['errors']}")
        for tgt in tgts:
            lg[tgt + name] = merge_rounds(got[tgt])
    return lg


def seed(c: Bench, size: dict, tgt: str, seeded: dict) -> dict:
    """The seeded experiment (runs) and history run (points) on `tgt`, made once per run."""
    if f"seed_{tgt}" not in seeded:
        say(f"seed {tgt}: {size['runs']} runs, {size['points']} points (bulk SQL)")
        seeded[f"seed_{tgt}"] = c.load("seed", tgt, "--runs", str(size["runs"]), "--points", str(size["points"]))
        say(f"  seeded in {seeded[f'seed_{tgt}']['seconds']}s")
    return seeded[f"seed_{tgt}"]


def do_search(c: Bench, size: dict, tgts: tuple[str, ...], seeded: dict) -> dict:
    se = {f"seed_{tgt}": seed(c, size, tgt, seeded) for tgt in tgts}
    settle(size["settle_s"])
    for tgt in tgts:
        seed_ = se[f"seed_{tgt}"]
        args = ("--experiment-id", seed_["experiment_id"], "--expect", str(seed_["runs"]))
        cpu0 = cpu_by_service(c)
        se[tgt] = res = c.load("search", tgt, *args, "--repeat", str(size["search_repeat"]))
        res["cpu_ms_per_req"] = cpu_ms_per_request(cpu0, cpu_by_service(c), size["search_repeat"] + 1)
        say(f"search {tgt}: p50 {res['p50_ms']} ms, p95 {res['p95_ms']} ms")
        args = ("--run-id", seed_["history_run_id"], "--points", str(size["points"]))
        se[f"history_{tgt}"] = res = c.load("history", tgt, *args, "--repeat", str(size["history_repeat"]))
        say(f"history {tgt}: p50 {res['p50_ms']} ms")
    return se


def do_ui(c: Bench, size: dict, tgts: tuple[str, ...], seeded: dict) -> dict:
    """bench/ui.py (Chromium, from the test virtualenv) on each target's seeded
    experiment and history run, the stack signed in as its admin."""
    python = ROOT / ".venv-tests" / "bin" / "python"
    if not python.exists():
        raise SystemExit("the ui workload needs the test virtualenv: run scripts/test --unit once (it creates it)")
    ui = {}
    settle(size["settle_s"])
    for tgt in tgts:
        seed_ = seed(c, size, tgt, seeded)
        if tgt == "stack":
            login = ["--url", c.url, "--user", c.env.get("MLFLOW_ADMIN_USERNAME", "admin")]
            login += ["--password", c.secret("mlflow_admin_password")]
        else:  # published on the host's loopback only, for this workload (bench/compose.bench.yaml)
            port = c.compose("port", "baseline", "5000").stdout.strip().rsplit(":", 1)[-1]
            login = ["--url", f"http://127.0.0.1:{port}"]
        args = ["--experiment-id", seed_["experiment_id"], "--run-id", seed_["history_run_id"]]
        out = subprocess.run(
            [str(python), str(ROOT / "bench" / "ui.py"), *login, *args, "--repeat", str(size["ui_repeat"])],
            capture_output=True,
            text=True,
            timeout=3600,
            check=True,
        ).stdout
        ui[tgt] = res = last_json(out)
        say(f"ui {tgt}: experiment page {res['experiment_s']} s, chart {res['chart_s']} s")
    return ui


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else round((ordered[mid - 1] + ordered[mid]) / 2, 1)


def rounds_of(c: Bench, size: dict, tgts: tuple[str, ...], describe: str, *args: str) -> dict[str, list[dict]]:
    """`artifact_rounds` rounds of one load.py workload; in each round every
    target in turn, the order reversed every other round. A single transfer
    on this noisy 2-core machine varied by +-25 %, so targets are compared by
    their median round."""
    got: dict[str, list[dict]] = {tgt: [] for tgt in tgts}
    settle(size["settle_s"])
    for i in range(size["artifact_rounds"]):
        for tgt in tgts if i % 2 == 0 else tgts[::-1]:
            say(f"{describe}, {tgt} (round {i + 1})")
            got[tgt].append(c.load(*args[:1], tgt, *args[1:]))
            say(f"  {got[tgt][-1]}")
    return got


def do_artifacts(c: Bench, size: dict, tgts: tuple[str, ...]) -> dict:
    mib = size["artifact_mib"]
    got = rounds_of(c, size, tgts, f"artifacts: {mib} MiB up and down", "artifacts", "--mib", str(mib))
    ar = {}
    for tgt, rounds in got.items():
        ar[tgt] = {
            "mib": mib,
            "upload_mb_s": median([r["upload_mb_s"] for r in rounds]),
            "download_mb_s": median([r["download_mb_s"] for r in rounds]),
            "rounds": rounds,
        }
    return ar


def do_parallel(c: Bench, size: dict, tgts: tuple[str, ...]) -> dict:
    """Many teammates downloading at once: N concurrent single-stream downloads."""
    n, mib = size["parallel_clients"], size["parallel_mib"]
    args = ("parallel", "--clients", str(n), "--mib", str(mib))
    got = rounds_of(c, size, tgts, f"parallel: {n} downloads of {mib} MiB at once", *args)
    return {
        tgt: {
            "clients": n,
            "mib": mib,
            "aggregate_mb_s": median([r["aggregate_mb_s"] for r in rounds]),
            "rounds": rounds,
        }
        for tgt, rounds in got.items()
    }


def do_runs_load(c: Bench, mode: str) -> dict:
    """`load_model("runs:/<id>/model")` of an MLflow 3 model. The baseline's
    missing-artifact 500s make MLflow's client retry for minutes; the smoke
    run turns its retries off to stay short (and says so)."""
    out = {}
    for tgt in ("stack", "baseline"):
        extra = ("--max-retries", "0") if mode == "smoke" and tgt == "baseline" else ()
        say(f"runs:/ model load, {tgt}{' (client retries off)' if extra else ''}")
        out[tgt] = res = c.load("runs-load", tgt, *extra)
        say(f"  {res['seconds']} s")
    return out


# Each variant: (file in nginx/, text, replacement) edits of the shipped config.
NGINX_VARIANTS = {
    "default": [],
    "no-gzip": [("nginx.conf", "gzip on;", "gzip off;")],
    "gzip-level-1": [("nginx.conf", "gzip_comp_level 5;", "gzip_comp_level 1;")],
    # What the artifact location did before (unbuffered: 4 KB reads from MLflow).
    "artifact-unbuffered": [
        (
            "locations.conf",
            "    proxy_buffering on;\n    proxy_max_temp_file_size 0;\n",
            "    proxy_buffering off;\n    proxy_max_temp_file_size 0;\n",
        )
    ],
    "api-buffering-off": [("locations.conf", "location / {\n", "location / {\n    proxy_buffering off;\n")],
}


def nginx_variant(name: str) -> str:
    """A copy of nginx/ with one lever changed, written under bench/results/."""
    if name not in NGINX_VARIANTS:
        raise SystemExit(f"NGINX_VARIANT={name}: not one of {', '.join(NGINX_VARIANTS)}")
    path = ROOT / "bench" / "results" / f"nginx-{name}"
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(ROOT / "nginx", path, ignore=shutil.ignore_patterns("certs"))
    for file, old, new in NGINX_VARIANTS[name]:
        text = (path / file).read_text()
        if text.count(old) != 1:
            raise SystemExit(f"NGINX_VARIANT={name}: {old.strip()!r} is not in nginx/{file} exactly once")
        (path / file).write_text(text.replace(old, new))
    return f"./bench/results/{path.name}"


def requests_per_replica(c: Bench, since: str, path: str = "/runs/log-batch") -> dict[str, int]:
    """How many requests for `path` each server replica logged since `since`
    (uvicorn's access log): proof that nginx spread the load."""
    counts = {}
    for name, cid in c.replicas("mlflow-server").items():
        logs = subprocess.run(["docker", "logs", "--since", since, cid], capture_output=True, text=True)
        counts[name] = sum(path in line for line in (logs.stdout + logs.stderr).splitlines())
    return counts


def do_matrix(c: Bench, size: dict, only: set[str], matrix: list[str], seeded: dict) -> dict:
    """Each lever value in turn on the same stack (compose recreates only the
    services whose settings changed), the chosen workloads on the stack only.
    With MLFLOW_SERVER_REPLICAS, each value's result also says how many
    replicas ran and how many log_batch requests each of them answered."""
    out: dict = {}
    for spec in matrix:
        var, values = spec.split("=", 1)
        saved = c.env.get(var)
        for value in values.split(","):
            c.env[var] = value
            if var == "NGINX_VARIANT":
                c.env["BENCH_NGINX_DIR"] = nginx_variant(value)
            say(f"lever {var}={value!r}: up --wait")
            res: dict = {"up_s": c.timed_up(*STACK_SERVICES)}
            if var == "MLFLOW_SERVER_REPLICAS":
                res["replicas"] = len(c.replicas("mlflow-server"))
                say(f"  {res['replicas']} mlflow-server replica(s) running")
            if "logging" in only:
                since = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                res["logging"] = do_logging(c, size, ("stack",))
                if var == "MLFLOW_SERVER_REPLICAS":
                    res["log_batch_per_replica"] = requests_per_replica(c, since)
                    say(f"  log_batch requests per replica: {res['log_batch_per_replica']}")
            if "search" in only:
                res["search"] = do_search(c, size, ("stack",), seeded)
            if "ui" in only:
                res["ui"] = do_ui(c, size, ("stack",), seeded)
            if "artifacts" in only:
                res["artifacts"] = do_artifacts(c, size, ("stack",))
            if "footprint" in only:
                res["footprint"] = footprint(c)
            key = f"{var}={value}"
            out[key if key not in out else f"{key} (again)"] = res
        c.env.pop("BENCH_NGINX_DIR", None)
        if saved is None:
            c.env.pop(var, None)
        else:
            c.env[var] = saved
        c.timed_up(*STACK_SERVICES)
    return out


def run(a: argparse.Namespace) -> int:
    mode = "smoke" if a.smoke else "full"
    size = dict(SIZES[mode])
    for kv in a.size or []:
        k, v = kv.split("=", 1)
        if k not in size:
            raise SystemExit(f"--size {k}: not one of {', '.join(size)}")
        size[k] = type(size[k])(v)
    only = set(a.only.split(",")) if a.only else set(WORKLOADS)
    unknown = only - set(WORKLOADS)
    if unknown:
        raise SystemExit(
            f"--only: unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}"
        )

    files = os.environ.get("COMPOSE_FILE", "compose.yaml")
    env = {"COMPOSE_FILE": f"{files}:bench/compose.bench.yaml", "HTTP_BIND": "127.0.0.1"}
    env["HTTP_PORT"] = str(free_port())
    levers = dict(kv.split("=", 1) for kv in a.set or [])
    if any(spec.startswith("MLFLOW_SERVER_REPLICAS=") for spec in a.matrix or []):
        # More than one server needs MLflow's job runner off (the server refuses
        # otherwise, docs/replicas.md); off for every count, so they compare.
        if levers.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false").lower() not in ("false", "0"):
            raise SystemExit("--matrix MLFLOW_SERVER_REPLICAS=...: needs MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false")
    env.update(levers)
    c = Bench(a.project or f"mlflowbench{secrets.token_hex(3)}", int(env["HTTP_PORT"]), env)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(a.out) if a.out else ROOT / "bench" / "results" / f"{stamp}.json"
    r: dict = {
        "mode": mode,
        "sizes": size,
        "levers": levers,
        "started": stamp,
        "project": c.project,
        "commit": git_commit(),
        "machine": machine(),
    }
    say(f"{mode} run, project {c.project}, workloads {', '.join(w for w in WORKLOADS if w in only)}")

    try:
        if not a.no_build:
            say("building images (cached after the first time)")
            c.compose("build", "--quiet", timeout=3600)
        c.down()
        say("cold start: up --wait (empty volumes, images built), trainer not started")
        cold = c.timed_up(*STACK_SERVICES)
        r["startup"] = {"cold_s": cold}
        say(f"  stack healthy in {cold}s")
        r["footprint"] = {"stack_idle_after_start": footprint(c), "baseline_idle_after_start": 0}
        if not a.matrix:  # levers are compared with each other, on the stack only
            r["startup"]["baseline_after_stack_s"] = c.timed_up("baseline")
            r["footprint"]["baseline_idle_after_start"] = footprint(c).get("baseline", 0)

        seeded: dict = {}
        if a.matrix:
            r["matrix"] = do_matrix(c, size, only, a.matrix, seeded)
            only = only & {"footprint"}
        if "logging" in only:
            r["logging"] = do_logging(c, size, ("baseline", "server", "stack"))
        if "search" in only:
            r["search"] = do_search(c, size, ("baseline", "stack"), seeded)
        if "ui" in only:
            r["ui"] = do_ui(c, size, ("baseline", "stack"), seeded)
        if "artifacts" in only:
            r["artifacts"] = do_artifacts(c, size, ("s3", "baseline", "stack"))
        if "parallel" in only:
            r["parallel"] = do_parallel(c, size, ("s3", "baseline", "stack"))
        if "runs_load" in only:
            r["runs_load"] = do_runs_load(c, mode)

        if "upload" in only:
            r["upload"] = big_upload(c, size["big_upload_mib"])

        mem = memory_by_service(c)
        fp = {svc: m["stats"] for svc, m in mem.items()}
        r["footprint"]["after_load"] = fp
        r["footprint"]["stack_total_after_load"] = sum(v for k, v in fp.items() if k != "baseline")
        r["footprint"]["stack_total_after_start"] = sum(r["footprint"]["stack_idle_after_start"].values())
        r["footprint"]["baseline_after_load"] = fp.get("baseline", 0)
        anon = {svc: m["anon"] for svc, m in mem.items()}
        r["footprint"]["after_load_anon"] = anon
        r["footprint"]["stack_anon_after_load"] = sum(v for k, v in anon.items() if k != "baseline")

        if "own_memory" in only:  # after the footprint above: it stops the baseline
            r["footprint"]["own_load"] = own_memory(c, size, seeded)

        if "startup" in only:
            say("restart: stop everything, up --wait again (data kept)")
            c.compose("stop")
            r["startup"]["restart_s"] = c.timed_up(*STACK_SERVICES)
            say(f"  healthy again in {r['startup']['restart_s']}s")

        r["targets"] = targets(r)
        r["finished"] = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(r, indent=1) + "\n")
        say(f"wrote {out}")
        chart = Path(a.chart) if a.chart else out.with_suffix(".png")
        render_chart(out, chart)
        say(f"wrote {chart}")
        print(table(r))
        return 0
    finally:
        if a.keep:
            say(f"kept: docker compose -p {c.project} ... (port {env['HTTP_PORT']})")
        else:
            c.down()


def render_chart(results: Path, chart: Path) -> None:
    """matplotlib runs in the server image (an MLflow dependency there), with
    the bench code, the results and the chart's directory mounted in."""
    chart.parent.mkdir(parents=True, exist_ok=True)
    image = os.environ.get("MLFLOW_SERVER_IMAGE", "mlflow-stack/mlflow-server:0.1.0")
    cmd = ["docker", "run", "--rm", "--network", "none", "--user", f"{os.getuid()}:{os.getgid()}"]
    cmd += ["-e", "MPLCONFIGDIR=/tmp/matplotlib", "-v", f"{ROOT / 'bench'}:/bench:ro"]
    cmd += ["-v", f"{results.parent.resolve()}:/in:ro", "-v", f"{chart.parent.resolve()}:/out"]
    cmd += ["--entrypoint", "python", image, "/bench/load.py", "chart", f"/in/{results.name}", f"/out/{chart.name}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def compare(label: str, baseline, stack) -> tuple[str, object, object, object]:
    """One table row: the baseline's value, the stack's, and stack/baseline."""
    return (label, baseline, stack, ratio(stack, baseline))


def table(r: dict) -> str:
    lines = [f"\nmlflow-stack benchmark ({r['mode']}), {r['started']}, levers {r['levers'] or 'defaults'}"]
    rows: list[tuple[str, object, object, object]] = []
    lg = r.get("logging")
    if lg:
        for suffix, label in (("", "10"), ("_1000", "1000")):
            b, s = lg["baseline" + suffix], lg["stack" + suffix]
            for key, unit in (
                ("req_per_s", "req/s"),
                ("p50_ms", "p50 ms"),
                ("p99_ms", "p99 ms"),
                ("error_rate", "errors"),
            ):
                rows.append(compare(f"log_batch {label} metrics: {unit}", b[key], s[key]))
            if len(s.get("rounds_req_per_s", [])) > 1:
                per_round = " / ".join(
                    f"{x / y:.2f}" for x, y in zip(s["rounds_req_per_s"], b["rounds_req_per_s"], strict=True)
                )
                rows.append(("  req/s stack/baseline, round by round", "", per_round, ""))
            if "server" + suffix in lg:  # the stack's server reached without nginx
                direct = lg["server" + suffix]
                for key, unit in (("req_per_s", "req/s"), ("p99_ms", "p99 ms")):
                    rows.append(compare(f"  same, server without nginx: {unit}", b[key], direct[key]))
            for tgt in ("baseline", "stack"):
                cpu = lg[tgt + suffix].get("cpu_ms_per_req")
                if cpu:
                    per_svc = ", ".join(f"{svc} {ms:g}" for svc, ms in cpu.items())
                    rows.append((f"  CPU ms per call, {tgt}", "", per_svc, ""))
    se = r.get("search")
    if se:
        for key in ("p50_ms", "p95_ms"):
            label = f"search_runs 1000/{se['seed_stack']['runs']}: {key}"
            rows.append(compare(label, se["baseline"][key], se["stack"][key]))
        for tgt in ("baseline", "stack"):
            cpu = se[tgt].get("cpu_ms_per_req")
            if cpu:
                per_svc = ", ".join(f"{svc} {ms:g}" for svc, ms in cpu.items())
                rows.append((f"  CPU ms per search, {tgt}", "", per_svc, ""))
        b, s = se["history_baseline"], se["history_stack"]
        rows.append(compare(f"get_metric_history {s['points']} pts: p50_ms", b["p50_ms"], s["p50_ms"]))
        for key in ("store_query_ms", "proto_json_ms", "client_parse_ms", "json_mb"):
            if key in s.get("breakdown", {}):
                rows.append(compare(f"  of which {key}", b["breakdown"][key], s["breakdown"][key]))
    ui = r.get("ui")
    if ui:
        for page in ("experiment", "chart"):
            rows.append(compare(f"UI {page} page: s to usable", ui["baseline"][f"{page}_s"], ui["stack"][f"{page}_s"]))
    ar = r.get("artifacts")
    if ar:
        for key in ("upload_mb_s", "download_mb_s"):
            mib = ar["s3"]["mib"]
            rows.append(compare(f"artifact {mib} MiB {key} (vs direct S3)", ar["s3"][key], ar["stack"][key]))
            rows.append(compare(f"artifact {mib} MiB {key} (plain mlflow)", ar["baseline"][key], ar["stack"][key]))
    par = r.get("parallel")
    if par:
        label = f"{par['stack']['clients']} x {par['stack']['mib']} MiB downloads at once: MB/s"
        rows.append(compare(f"{label} (vs direct S3)", par["s3"]["aggregate_mb_s"], par["stack"]["aggregate_mb_s"]))
        rows.append(
            compare(f"{label} (plain mlflow)", par["baseline"]["aggregate_mb_s"], par["stack"]["aggregate_mb_s"])
        )
    rl = r.get("runs_load")
    if rl:
        note = " (baseline: client retries off)" if rl["baseline"].get("max_retries") == 0 else ""
        rows.append(compare(f"load_model(runs:/...) s{note}", rl["baseline"]["seconds"], rl["stack"]["seconds"]))
    up = r.get("upload")
    if up:
        growth = up["memory"]["growth_stats_mb"]
        if "memory_nginx" in up:
            growth = f"{growth} | {up['memory_nginx']['growth_stats_mb']}"
        rows.append(
            (f"{up['mib']} MiB upload: MB/s | growth MB server | nginx", "", f"{up.get('upload_mb_s')} | {growth}", "")
        )
        if up.get("disk"):
            d = up["disk"]
            rows.append(
                (
                    "  bytes on server disk: /tmp peak | written",
                    "",
                    f"{d['server_tmp_peak_bytes']} | {d['server_written_bytes']}",
                    "",
                )
            )
    capped = r.get("upload_capped")
    if capped:
        rows.append(
            (
                f"  same, capped at {capped['cap_bytes'] / 1e6:.0f} MB: ok | MB/s | anon growth MB",
                "",
                f"{capped['ok']} | {capped.get('upload_mb_s')} | {capped['memory']['growth_anon_mb']}",
                "",
            )
        )
    st = r.get("startup")
    if st:
        rows.append(("cold up --wait s | restart s", "", f"{st['cold_s']} | {st.get('restart_s', '-')}", ""))
    fp = r.get("footprint")
    if fp:
        mib = 1 << 20
        rows.append(
            (
                "idle memory MiB, after start",
                round(fp["baseline_idle_after_start"] / mib),
                round(fp["stack_total_after_start"] / mib),
                "",
            )
        )
        rows.append(
            (
                "idle memory MiB, after load",
                round(fp["baseline_after_load"] / mib),
                round(fp["stack_total_after_load"] / mib),
                "",
            )
        )
        for svc, v in fp["after_load"].items():
            rows.append((f"  {svc}", "", round(v / mib), ""))
        if "after_load_anon" in fp:
            rows.append(
                (
                    "  of which processes (anon), not file cache",
                    round(fp["after_load_anon"].get("baseline", 0) / mib),
                    round(fp["stack_anon_after_load"] / mib),
                    "",
                )
            )
        own = fp.get("own_load")
        if own:
            label = "idle memory MiB, after the stack's own load alone"
            if not all(own["cache_dropped"].values()):
                label += " (file cache not dropped: not root?)"
            rows.append((label, "", round(own["stack_total_after_load"] / mib), ""))
            for svc, v in own["after_load"].items():
                rows.append((f"  {svc}", "", round(v / mib), ""))
            anon = round(own["stack_anon_after_load"] / mib)
            rows.append(("  of which processes (anon), not file cache", "", anon, ""))
    w = max(len(x[0]) for x in rows) + 2
    lines.append(f"{'measure':<{w}}{'baseline':>14}{'stack':>18}{'ratio':>8}")
    for name, b, s, q in rows:
        lines.append(f"{name:<{w}}{fmt(b):>14}{fmt(s):>18}{fmt(q) if q != '' else '':>8}")
    if r.get("matrix"):
        lines.append("")
        lines.append("levers (stack only, same run):")
        for lever, m in r["matrix"].items():
            parts = [f"up {m['up_s']}s"]
            if "replicas" in m:
                parts.append(f"{m['replicas']} replica(s)")
            if "log_batch_per_replica" in m:
                parts.append("log_batch per replica " + "/".join(map(str, m["log_batch_per_replica"].values())))
            lg = m.get("logging")
            if lg:
                s10, s1k = lg["stack"], lg["stack_1000"]
                parts.append(
                    f"log10 {s10['req_per_s']} req/s p50 {s10['p50_ms']} p99 {s10['p99_ms']} err {s10['errors']}"
                )
                parts.append(f"log1000 {s1k['req_per_s']} req/s p99 {s1k['p99_ms']}")
            se = m.get("search")
            if se:
                parts.append(f"search p50 {se['stack']['p50_ms']} p95 {se['stack']['p95_ms']}")
                parts.append(f"history p50 {se['history_stack']['p50_ms']}")
            ar = m.get("artifacts")
            if ar:
                parts.append(f"artifact up {ar['stack']['upload_mb_s']} down {ar['stack']['download_mb_s']} MB/s")
            fp = m.get("footprint")
            if fp:
                parts.append(f"memory {round(sum(fp.values()) / (1 << 20))} MiB")
            lines.append(f"  {lever:<40} " + "; ".join(parts))
    lines.append("")
    lines.append(f"{'target':<55}{'value':>10}  {'goal':<8} result")
    for t in r["targets"]:
        lines.append(f"{t['target']:<55}{fmt(t['value']):>10}  {t['goal']:<8} {t['result']}")
    if r["mode"] == "smoke":
        lines.append("(smoke sizes: the PASS/MISS above says nothing about performance)")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(
        prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="every workload at tiny sizes (seconds); what CI runs")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(WORKLOADS)}")
    p.add_argument("--size", action="append", metavar="NAME=N", help=f"override one size: {', '.join(SIZES['full'])}")
    p.add_argument(
        "--set",
        action="append",
        metavar="VAR=VALUE",
        help="a stack setting (lever) for this run, e.g. MLFLOW_WORKERS=4",
    )
    p.add_argument(
        "--matrix",
        action="append",
        metavar="VAR=V1,V2",
        help="measure a lever: the --only workloads on the stack for each value (repeatable)",
    )
    p.add_argument("--out", help="results JSON (default bench/results/<UTC time>.json)")
    p.add_argument("--chart", help="chart PNG (default: next to the JSON)")
    p.add_argument("--project", help="compose project name (default: mlflowbench<random>)")
    p.add_argument("--keep", action="store_true", help="leave the benchmark's stack running")
    p.add_argument("--no-build", action="store_true", help="use the images as they are")
    p.add_argument("--report", metavar="JSON", help="print the table and redraw the chart of an earlier run, then exit")
    a = p.parse_args()
    if a.report:
        results = Path(a.report)
        r = json.loads(results.read_text())
        r["targets"] = targets(r)
        render_chart(results, Path(a.chart) if a.chart else results.with_suffix(".png"))
        print(table(r))
        return 0
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
