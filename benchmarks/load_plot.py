"""The load tool's chart (benchmarks/load.py `--plot`): latency percentiles and throughput
against the load level."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot(levels: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [lv["label"] for lv in levels]
    x = range(len(levels))
    fig, (lat, thr) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for q, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
        lat.plot(x, [lv["ttfa_s"][q] if lv["ttfa_s"][q] is not None else float("nan") for lv in levels],
                 style, label=f"time to first audio {q}")
    for q, style in (("p50", "o-"), ("p95", "s--")):
        lat.plot(x, [lv["rtf"][q] if lv["rtf"][q] is not None else float("nan") for lv in levels],
                 style, label=f"RTF {q}")
    lat.axhline(1.0, color="grey", lw=0.8)
    lat.set_ylabel("seconds / RTF")
    lat.legend(fontsize=8)
    lat.set_title(title)
    thr.bar(x, [lv["throughput_audio_s_per_s"] for lv in levels], color="tab:green")
    for i, lv in enumerate(levels):
        thr.annotate(f"ok {lv['ok']} / rej {lv['rejected']} / fail {lv['failed']}", (i, 0), fontsize=7,
                     ha="center", va="bottom", rotation=90, color="white", xytext=(0, 4), textcoords="offset points")
    thr.set_ylabel("audio s per s")
    thr.set_xticks(list(x), labels)
    thr.set_xlabel("load level (c = concurrent clients, /s = arrival rate)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
