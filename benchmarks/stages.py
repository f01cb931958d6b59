"""Where the time goes, from a server's own metrics: the per-stage histogram
(`tts_stage_seconds{stage}`: queue, prefill, decode, encode, transport) and the engine step
(`tts_engine_step_duration_seconds`, as stage "step"), scraped from a Prometheus text endpoint
before and after a load level; the difference is that level's. Works on the in-process server's
`/metrics` and on Ray's metrics export (`make serve`: 127.0.0.1:8080/metrics, names with a
`ray_` prefix; Ray exports every few seconds, so wait that long before the second scrape).
Series are summed over replicas and protocols. Quantiles are interpolated within buckets, as
PromQL's histogram_quantile does."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

STAGE, STEP = "tts_stage_seconds", "tts_engine_step_duration_seconds"
Snapshot = dict[str, dict[str, Any]]  # stage -> {"buckets": {le: count}, "sum": s, "count": n}


def parse(text: str) -> Snapshot:
    out: Snapshot = defaultdict(lambda: {"buckets": defaultdict(float), "sum": 0.0, "count": 0.0})
    for family in text_string_to_metric_families(text):
        name = family.name.removeprefix("ray_")
        if name not in (STAGE, STEP):
            continue
        for s in family.samples:
            stage = s.labels.get("stage", "step") if name == STAGE else "step"
            if s.name.endswith("_bucket"):
                out[stage]["buckets"][float(s.labels["le"])] += s.value
            elif s.name.endswith("_sum"):
                out[stage]["sum"] += s.value
            elif s.name.endswith("_count"):
                out[stage]["count"] += s.value
    return dict(out)


def scrape(url: str) -> Snapshot:
    return parse(httpx.get(url, timeout=10).raise_for_status().text)


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative bucket counts {le: count}."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank, lower, below = q * buckets[bounds[-1]], 0.0, 0.0
    for le in bounds:
        if buckets[le] >= rank:
            if math.isinf(le):
                return lower  # in the open top bucket: its lower bound, as PromQL does
            inside = buckets[le] - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, buckets[le]
    return lower


def difference(before: Snapshot, after: Snapshot) -> dict[str, dict[str, float | None]]:
    """Per stage, what happened between the scrapes: count, mean and p50 / p95 (seconds)."""
    report = {}
    for stage, now in sorted(after.items()):
        was = before.get(stage, {"buckets": {}, "sum": 0.0, "count": 0.0})
        count = now["count"] - was["count"]
        if count <= 0:
            continue
        buckets = {le: n - was["buckets"].get(le, 0.0) for le, n in now["buckets"].items()}
        report[stage] = {"count": count, "mean_s": (now["sum"] - was["sum"]) / count,
                         "p50_s": quantile(0.5, buckets), "p95_s": quantile(0.95, buckets)}
    return report


def describe(stages: dict[str, dict[str, float | None]]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.1f}"

    return "; ".join(f"{stage} p50 {ms(s['p50_s'])} p95 {ms(s['p95_s'])} ms" for stage, s in stages.items())
