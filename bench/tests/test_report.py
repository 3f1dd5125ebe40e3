"""The benchmark's own arithmetic and report, with no Docker: targets'
PASS/MISS at their boundaries, merged logging rounds, the table's memory
rows, the commit a results file records. The committed results file
(docs/bench-results-*.json, the latest full run) is the realistic input."""

from __future__ import annotations

import copy
import json
import math
import re
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import bench  # noqa: E402  (bench/bench.py)

ROOT = HERE.parent.parent
GIB = 1 << 30


@pytest.fixture(scope="module")
def latest() -> dict:
    files = sorted((ROOT / "docs").glob("bench-results-*.json"))
    assert len(files) == 1, files  # docs/ keeps the latest full run only
    return json.loads(files[0].read_text())


def result(rows: list[dict], name: str) -> dict:
    found = [t for t in rows if t["target"] == name]
    assert len(found) == 1, [t["target"] for t in rows]
    return found[0]


def test_targets_recomputed_from_the_results_match_the_ones_it_recorded(latest: dict) -> None:
    assert bench.targets(latest) == latest["targets"]


def test_the_memory_target_is_the_mixed_run_s_footprint_at_its_boundary(latest: dict) -> None:
    name = "idle memory, whole stack, after load GiB"
    r = copy.deepcopy(latest)
    r["footprint"]["stack_total_after_load"] = int(1.5 * GIB)
    assert result(bench.targets(r), name) == {"target": name, "value": 1.5, "goal": "<= 1.5", "result": "PASS"}
    r["footprint"]["stack_total_after_load"] = int(1.52 * GIB)
    assert result(bench.targets(r), name)["result"] == "MISS"
    # The reading after the stack's own load is reported, never a target.
    r["footprint"]["own_load"]["stack_total_after_load"] = 0
    assert result(bench.targets(r), name)["result"] == "MISS"


@pytest.mark.parametrize(
    ("stack", "baseline", "verdict"),
    [(120, 100, "PASS"), (119, 100, "MISS"), (240, 100, "PASS")],
)
def test_log_batch_throughput_passes_at_1_2_times_the_baseline(latest: dict, stack, baseline, verdict) -> None:
    r = copy.deepcopy(latest)
    r["logging"]["stack"]["req_per_s"], r["logging"]["baseline"]["req_per_s"] = stack, baseline
    assert result(bench.targets(r), "logging 10/batch: req/s stack/baseline")["result"] == verdict


def test_ui_pages_pass_at_parity_and_miss_above_it(latest: dict) -> None:
    r = copy.deepcopy(latest)
    r["ui"]["stack"]["experiment_s"] = r["ui"]["baseline"]["experiment_s"]
    r["ui"]["stack"]["chart_s"] = r["ui"]["baseline"]["chart_s"] * 1.02
    rows = bench.targets(r)
    assert result(rows, "UI experiment page: time to usable stack/baseline")["result"] == "PASS"
    assert result(rows, "UI chart page: time to usable stack/baseline")["result"] == "MISS"


def test_only_the_measured_workloads_get_targets() -> None:
    assert bench.targets({"mode": "full"}) == []
    r = {"startup": {"cold_s": 59.9}}
    assert bench.targets(r) == [{"target": "cold up --wait s", "value": 59.9, "goal": "<= 60", "result": "PASS"}]


def test_rounds_merge_into_one_measurement() -> None:
    def one(requests: int, seconds: float, latencies: list[float], cpu: float) -> dict:
        return {
            "requests": requests,
            "errors": 0,
            "seconds": seconds,
            "latencies_ms": latencies,
            "req_per_s": requests / seconds,
            "stored_points_m0": requests,
            "expected_points_m0": requests,
            "clients": 2,
            "metrics_per_call": 10,
            "cpu_ms_per_req": {"mlflow-server": cpu},
        }

    merged = bench.merge_rounds([one(3, 1.0, [10, 20, 30], 4.0), one(1, 1.0, [1000], 8.0)])
    assert merged["requests"] == 4 and merged["seconds"] == 2.0 and merged["req_per_s"] == 2.0
    assert merged["p50_ms"] == 25.0  # over every call's latency, not a mean of the rounds' medians
    assert merged["p99_ms"] == pytest.approx(970.9, abs=0.1)
    assert merged["cpu_ms_per_req"] == {"mlflow-server": 5.0}  # weighted by each round's calls
    assert merged["rounds_req_per_s"] == [3.0, 1.0]
    assert merged["error_rate"] == 0.0


def test_ratio_and_median() -> None:
    assert bench.ratio(3, 4) == 0.75
    assert bench.ratio(3, 0) is None
    assert bench.median([3, 1, 2]) == 2
    assert bench.median([4, 1, 2, 3]) == 2.5


def test_the_table_shows_memory_after_the_stack_s_own_load(latest: dict) -> None:
    text = bench.table(latest)
    own = latest["footprint"]["own_load"]
    mib = round(own["stack_total_after_load"] / (1 << 20))
    assert re.search(rf"^idle memory MiB, after the stack's own load alone +{mib} *$", text, re.M)
    assert "not root" not in text
    r = copy.deepcopy(latest)
    first = next(iter(r["footprint"]["own_load"]["cache_dropped"]))
    r["footprint"]["own_load"]["cache_dropped"][first] = False
    assert "after the stack's own load alone (file cache not dropped: not root?)" in bench.table(r)
    assert not any(math.isnan(v) for v in own["after_load"].values())


def test_drop_file_cache_uses_whichever_file_the_cgroup_version_has(tmp_path: Path, monkeypatch) -> None:
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "memory.force_empty").write_text("")
    monkeypatch.setattr(bench, "cgroup_dir", lambda _cid: v1)
    assert bench.drop_file_cache("c") is True
    assert (v1 / "memory.force_empty").read_text() == "0"

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.reclaim").write_text("")
    monkeypatch.setattr(bench, "cgroup_dir", lambda _cid: v2)
    assert bench.drop_file_cache("c") is True
    assert int((v2 / "memory.reclaim").read_text()) == 64 << 30

    monkeypatch.setattr(bench, "cgroup_dir", lambda _cid: tmp_path / "absent")
    assert bench.drop_file_cache("c") is False
    monkeypatch.setattr(bench, "cgroup_dir", lambda _cid: None)
    assert bench.drop_file_cache("c") is False


def test_memory_reclaim_s_eagain_means_it_took_what_it_could(tmp_path: Path, monkeypatch) -> None:
    """cgroup v2 answers EAGAIN when less than the amount asked for was
    reclaimable; the cache was dropped all the same."""
    (tmp_path / "memory.reclaim").write_text("")
    monkeypatch.setattr(bench, "cgroup_dir", lambda _cid: tmp_path)
    real = Path.write_text

    def eagain(self: Path, data: str, *args, **kwargs) -> int:
        if self.name == "memory.reclaim":
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", eagain)
    assert bench.drop_file_cache("c") is True


def test_results_record_the_commit_they_ran_on(latest: dict) -> None:
    assert re.fullmatch(r"[0-9a-f]{40}(\+changes)?", latest["commit"])
    assert re.fullmatch(r"[0-9a-f]{40}(\+changes)?|unknown", bench.git_commit())
