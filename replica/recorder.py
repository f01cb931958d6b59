"""A replica's metrics: per-step batch size and duration, engine gauges and how requests end,
the context cache, and device memory (read at most once a second: on accelerators it is a
driver call). Records into any MetricsSink (prometheus-client in-process, Ray's metrics
under Ray); the definitions are observability/metrics.py's."""

from __future__ import annotations

import os
import time

from models.loading.device import device_label, memory_bytes
from models.loading.loader import LoadedModel
from models.params import EngineStats
from observability import metrics as m

from .context_cache import ContextCacheStats


def held_card() -> str:
    """The card Ray gave this process ("npu:3", "cuda:0"), from the variables Ray sets per
    actor for the NPU / GPU resource; "none" for a replica without a card."""
    for kind, var in (("npu", "ASCEND_RT_VISIBLE_DEVICES"), ("cuda", "CUDA_VISIBLE_DEVICES")):
        if os.environ.get(var):
            return f"{kind}:{os.environ[var]}"
    return "none"


class EngineRecorder:
    """`on_step` for the EngineLoop (its thread) and `on_cache` for the context cache (the
    event loop): counters are recorded as the increase since the last snapshot."""

    def __init__(self, metrics: m.MetricsSink, loaded: LoadedModel, memory_period_s: float = 1.0) -> None:
        self.metrics, self.loaded = metrics, loaded
        self.device = device_label(loaded.device)
        self.memory_period_s = memory_period_s
        self._last_memory = 0.0
        self._finished: dict[str, int] = {}
        self._lookups: dict[tuple[str, str], int] = {}
        self._positions: dict[tuple[str, str], int] = {}
        self._evictions = 0
        self._cache: ContextCacheStats | None = None  # the latest, re-exported with the memory gauges
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
        if (cache := self._cache) is not None:
            self.metrics.set(m.CONTEXT_BYTES, cache.num_bytes)
            self.metrics.set(m.CONTEXT_ENTRIES, cache.num_entries)
        self._last_memory = time.monotonic()

    def on_stage(self, stage: str, seconds: float) -> None:
        self.metrics.observe(m.STAGE_SECONDS, seconds, {"stage": stage})

    def on_admission(self, capacity: int, headroom: int, interactive: int, batch: int) -> None:
        self.metrics.set(m.CAPACITY, capacity)
        self.metrics.set(m.HEADROOM, headroom)
        self.metrics.set(m.STREAMS, interactive, {"priority": "interactive"})
        self.metrics.set(m.STREAMS, batch, {"priority": "batch"})

    def on_step(self, stats: EngineStats) -> None:
        self.metrics.set(m.PAUSED, stats.num_paused)
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
        if time.monotonic() - self._last_memory >= self.memory_period_s:
            self.record_memory()

    def on_cache(self, stats: ContextCacheStats) -> None:
        self._cache = stats
        for result, counts in (("hit", stats.num_hits), ("miss", stats.num_misses)):
            for kind, count in counts:
                seen = self._lookups.get((kind, result), 0)
                if count > seen:
                    self.metrics.inc(m.CONTEXT_LOOKUPS, count - seen, {"kind": kind, "result": result})
                    self._lookups[kind, result] = count
        for kind, how, count in stats.num_positions:
            seen = self._positions.get((kind, how), 0)
            if count > seen:
                self.metrics.inc(m.CONTEXT_POSITIONS, count - seen, {"kind": kind, "how": how})
                self._positions[kind, how] = count
        if stats.num_evictions > self._evictions:
            self.metrics.inc(m.CONTEXT_EVICTIONS, stats.num_evictions - self._evictions)
            self._evictions = stats.num_evictions
        self.metrics.set(m.CONTEXT_BYTES, stats.num_bytes)
        self.metrics.set(m.CONTEXT_ENTRIES, stats.num_entries)
