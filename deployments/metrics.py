"""The definitions of observability/metrics.py bound to Ray Serve's metrics (exported by Ray's
metrics agent, with deployment/replica/application tags and a `ray_` prefix)."""

from __future__ import annotations

from observability import metrics as m


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
