"""Metrics glue: the definitions of serve/metrics.py bound to Ray Serve's metrics (exported
by Ray's metrics agent, with deployment/replica/application tags and a `ray_` prefix), and
the engine-side recorder shared by the Ray and in-process backends."""

from __future__ import annotations

import os
import time

from models.loading.device import device_label, memory_bytes
from models.loading.loader import LoadedModel
from models.params import EngineStats
from serve import metrics as m


class _Tagged:
    """A Ray metric with tags bound, called like a labelled prometheus-client child."""

    def __init__(self, metric, tags: dict[str, str] | None) -> None:
        self.metric, self.tags = metric, tags

    def inc(self, value: float) -> None:
        self.metric.inc(value, tags=self.tags)

    def set(self, value: float) -> None:
        self.metric.set(value, tags=self.tags)

    def observe(self, value: float) -> None:
        self.metric.observe(value, tags=self.tags)


class RayMetrics(m.InstrumentSink):
    """The same definitions on ray.serve.metrics."""

    def make(self, d: m.MetricDef):
        from ray.serve import metrics as rm

        if d.kind == "counter":
            return rm.Counter(d.name.removesuffix("_total"), d.help, d.labels)
        if d.kind == "gauge":
            return rm.Gauge(d.name, d.help, d.labels)
        return rm.Histogram(d.name, d.help, list(d.buckets), d.labels)

    def bind(self, instrument, labels: dict[str, str] | None) -> _Tagged:
        return _Tagged(instrument, labels)


def held_card() -> str:
    """The card Ray gave this process ("npu:3", "cuda:0"), from the variables Ray sets per
    actor for the NPU / GPU resource; "none" for an engine without a card."""
    for kind, var in (("npu", "ASCEND_RT_VISIBLE_DEVICES"), ("cuda", "CUDA_VISIBLE_DEVICES")):
        if os.environ.get(var):
            return f"{kind}:{os.environ[var]}"
    return "none"


class EngineRecorder:
    """`on_step` for AsyncEngine: per-step batch size and duration, engine gauges, and device
    memory (read at most once a second: on accelerators it is a driver call)."""

    def __init__(self, metrics: m.MetricsSink, loaded: LoadedModel, memory_period_s: float = 1.0) -> None:
        self.metrics, self.loaded = metrics, loaded
        self.device = device_label(loaded.device)
        self.memory_period_s = memory_period_s
        self._last_memory = 0.0
        self._prefix_hits = 0
        self._finished: dict[str, int] = {}
        self._info = {"model": loaded.name, "dtype": str(loaded.dtype).removeprefix("torch."), "device": self.device,
                      "card": held_card()}
        self.record_memory()

    def record_memory(self) -> None:
        """Memory, and the static model gauges again (a Ray replica's constructor runs before
        its metrics tags exist, so values set only there are not exported)."""
        self.metrics.set(m.LOAD_SECONDS, self.loaded.load_s)
        self.metrics.set(m.MODEL_INFO, 1, self._info)
        used, total = memory_bytes(self.loaded.device)
        self.metrics.set(m.MEM_USED, used, {"device": self.device})
        self.metrics.set(m.MEM_TOTAL, total, {"device": self.device})
        if self.loaded.device.type != "cpu":
            import torch

            self.metrics.set(m.RSS, memory_bytes(torch.device("cpu"))[0])
        else:
            self.metrics.set(m.RSS, used)
        self._last_memory = time.monotonic()

    def on_step(self, stats: EngineStats) -> None:
        if stats.last_batch_size:
            self.metrics.observe(m.BATCH_SIZE, stats.last_batch_size)
            self.metrics.observe(m.STEP_SECONDS, stats.last_step_s)
            self.metrics.inc(m.AUDIO_FRAMES, stats.last_batch_size)
        self.metrics.set(m.RUNNING, stats.num_running)
        self.metrics.set(m.WAITING, stats.num_waiting)
        self.metrics.set(m.KV_USED, stats.num_kv_slots_used)
        self.metrics.set(m.KV_TOTAL, stats.num_kv_slots_total)
        for reason, count in stats.num_finished:
            if count > self._finished.get(reason, 0):
                self.metrics.inc(m.FINISHED, count - self._finished.get(reason, 0), {"reason": reason})
                self._finished[reason] = count
        if stats.num_prefix_hits > self._prefix_hits:
            self.metrics.inc(m.PREFIX_HITS, stats.num_prefix_hits - self._prefix_hits)
            self._prefix_hits = stats.num_prefix_hits
        if time.monotonic() - self._last_memory >= self.memory_period_s:
            self.record_memory()
