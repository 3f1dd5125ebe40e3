"""The benchmark's chart: baseline vs stack for each workload, one PNG."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# One target, one colour, in every panel.
COLORS = {"baseline": "tab:blue", "stack": "tab:orange", "direct S3": "tab:green", "server": "tab:purple"}


def bars(ax, title: str, labels: list[str], series: dict[str, list[float]], unit: str) -> None:
    n = len(series)
    width = 0.8 / n
    for i, (name, values) in enumerate(series.items()):
        xs = [x + (i - (n - 1) / 2) * width for x in range(len(labels))]
        drawn = ax.bar(xs, values, width, label=name, color=COLORS[name])
        ax.bar_label(drawn, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit, fontsize=8)
    ax.legend(fontsize=7)


def render(results: str, out: str) -> None:
    with open(results) as f:
        r = json.load(f)
    panels = [k for k in ("logging", "search", "artifacts", "footprint") if k in r]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4))
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, key in zip(axes, panels, strict=True):
        if key == "logging":
            lg = r["logging"]
            bars(
                ax,
                f"log_batch, {lg['stack']['clients']} clients",
                ["10 metrics\nreq/s", "10 metrics\np99 ms/10", "1000 metrics\nreq/s"],
                {
                    t: [lg[t]["req_per_s"], lg[t]["p99_ms"] / 10, lg[t + "_1000"]["req_per_s"]]
                    for t in ("baseline", "stack")
                },
                "req/s  |  ms/10",
            )
        elif key == "search":
            se = r["search"]
            bars(
                ax,
                f"search {se['seed_stack']['runs']} runs, history {se['history_stack']['points']} pts",
                ["search p50", "search p95", "history p50"],
                {t: [se[t]["p50_ms"], se[t]["p95_ms"], se[f"history_{t}"]["p50_ms"]] for t in ("baseline", "stack")},
                "ms",
            )
        elif key == "artifacts":
            ar, par = r["artifacts"], r.get("parallel")
            labels = ["upload", "download"]
            values = {t: [ar[t]["upload_mb_s"], ar[t]["download_mb_s"]] for t in ("s3", "baseline", "stack")}
            if par:
                labels.append(f"{par['stack']['clients']} downloads\nat once")
                for t in values:
                    values[t].append(par[t]["aggregate_mb_s"])
            names = {"s3": "direct S3", "baseline": "baseline", "stack": "stack"}
            bars(ax, f"artifact {ar['s3']['mib']} MiB", labels, {names[t]: v for t, v in values.items()}, "MB/s")
        else:
            fp = r["footprint"]["after_load"]
            names = [k for k in fp if k != "baseline"]
            ax.bar(names, [fp[k] / (1 << 20) for k in names], color=COLORS["stack"], label="stack")
            if "baseline" in fp:
                ax.bar(["baseline\n(server)"], [fp["baseline"] / (1 << 20)], color=COLORS["baseline"], label="baseline")
            ax.set_title("idle memory after load", fontsize=10)
            ax.set_ylabel("MiB", fontsize=8)
            ax.tick_params(axis="x", labelsize=7, rotation=30)
            ax.legend(fontsize=7)
    fig.suptitle(f"mlflow-stack vs plain mlflow server ({r['mode']}, {r['started']}, {r['machine']['nproc']} cores)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
