"""One percentile for the whole benchmark: the load generator's per-run
numbers and scripts/bench's merged rounds agree on how it is computed.
Standard library only (imported on the host and in the `bench` container)."""

from __future__ import annotations


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, interpolated between neighbours; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
