"""The PromQL of the dashboard and the alerts, in one place. Metric names are as Ray's metrics
agent exports the definitions of observability/metrics.py: with a `ray_` prefix, and Serve's
`application`, `deployment` and `replica` labels on every series."""

from __future__ import annotations

SEL = 'application=~"$application", replica=~"$replica"'


def quantile(q: float, metric: str, sel: str = SEL, window: str = "$__rate_interval") -> str:
    return f"histogram_quantile({q}, sum by (le) (rate(ray_{metric}_bucket{{{sel}}}[{window}])))"


_STREAMS = f"sum by (protocol) (rate(ray_tts_stream_min_slack_seconds_count{{{SEL}}}[$__rate_interval]))"

PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    # (title, unit, [(legend, expr), ...])
    ("Real-time factor (p50 / p95; below 1 is faster than real time)", "none", [
        ("p50", quantile(0.5, "tts_real_time_factor")),
        ("p95", quantile(0.95, "tts_real_time_factor")),
        ("real time", "vector(1)"),
    ]),
    ("Time to first audio (p50 / p95)", "s", [
        ("p50", quantile(0.5, "tts_time_to_first_audio_seconds")),
        ("p95", quantile(0.95, "tts_time_to_first_audio_seconds")),
    ]),
    ("Listeners hearing gaps: underruns per second (real-time playback from the first chunk)", "reqps", [
        # the counter is exported from the first gap on: 0 until then, per protocol that streams
        ("underruns {{protocol}}", f"sum by (protocol) (rate(ray_tts_stream_underruns_total{{{SEL}}}[$__rate_interval])) "
         f"or {_STREAMS} * 0"),
        ("streams {{protocol}}", _STREAMS),
    ]),
    ("Least buffered audio per stream (p05 / p50; the lowest bucket holds the gaps)", "s", [
        ("p05", quantile(0.05, "tts_stream_min_slack_seconds")),
        ("p50", quantile(0.5, "tts_stream_min_slack_seconds")),
    ]),
    ("Where the time goes: p95 per stage (queue, prefill, decode, encode, transport)", "s", [
        ("{{stage}}", f"histogram_quantile(0.95, sum by (le, stage) "
                      f"(rate(ray_tts_stage_seconds_bucket{{{SEL}}}[$__rate_interval])))"),
        ("engine step", quantile(0.95, "tts_engine_step_duration_seconds")),
    ]),
    ("Real-time capacity: interactive streams kept real time, held, and headroom", "none", [
        ("capacity", f"sum(ray_tts_realtime_capacity_streams{{{SEL}}})"),
        ("headroom", f"sum(ray_tts_realtime_headroom_streams{{{SEL}}})"),
        ("{{priority}} streams", f"sum by (priority) (ray_tts_streams{{{SEL}}})"),
    ]),
    ("Batch requests paused for interactive ones", "none", [
        ("paused {{replica}}", f"sum by (replica) (ray_tts_engine_paused_requests{{{SEL}}})"),
    ]),
    ("Throughput: audio seconds per second", "none", [
        ("audio s/s", f"sum(rate(ray_tts_audio_seconds_total{{{SEL}}}[$__rate_interval]))"),
    ]),
    ("Engine batch size (p50 / p95)", "none", [
        ("p50", quantile(0.5, "tts_engine_batch_size")),
        ("p95", quantile(0.95, "tts_engine_batch_size")),
    ]),
    ("Running / waiting requests", "none", [
        ("running {{replica}}", f"sum by (replica) (ray_tts_engine_running_requests{{{SEL}}})"),
        ("waiting {{replica}}", f"sum by (replica) (ray_tts_engine_waiting_requests{{{SEL}}})"),
    ]),
    ("Device memory used vs total", "bytes", [
        ("used {{device}} {{replica}}", f"max by (device, replica) (ray_tts_device_memory_used_bytes{{{SEL}}})"),
        ("total {{device}} {{replica}}", f"max by (device, replica) (ray_tts_device_memory_total_bytes{{{SEL}}})"),
    ]),
    ("Error rate by status code", "reqps", [
        ("{{code}}", f"sum by (code) (rate(ray_tts_errors_total{{{SEL}}}[$__rate_interval]))"),
    ]),
    ("Requests by outcome", "reqps", [
        ("{{outcome}}", f"sum by (outcome) (rate(ray_tts_requests_total{{{SEL}}}[$__rate_interval]))"),
    ]),
    ("Requests by protocol", "reqps", [
        ("{{protocol}}", f"sum by (protocol) (rate(ray_tts_requests_total{{{SEL}}}[$__rate_interval]))"),
    ]),
    ("Context cache: bytes of prefix KV held per replica", "bytes", [
        ("{{replica}}", f"max by (replica) (ray_tts_context_cache_bytes{{{SEL}}})"),
    ]),
    ("Context cache lookups (hit: the voice's KV was cached)", "reqps", [
        ("{{kind}} {{result}}",
         f"sum by (kind, result) (rate(ray_tts_context_cache_lookups_total{{{SEL}}}[$__rate_interval]))"),
    ]),
    ("Context positions: reused from a cached prefix vs computed for the request", "none", [
        ("{{kind}} {{how}}",
         f"sum by (kind, how) (rate(ray_tts_context_positions_total{{{SEL}}}[$__rate_interval]))"),
    ]),
    ("Conversations kept", "none", [
        ("conversations", f"max(ray_tts_conversations{{{SEL}}})"),
    ]),
    ("How engine requests end (length = ran to the frame cap)", "reqps", [
        ("{{reason}} {{replica}}",
         f"sum by (reason, replica) (rate(ray_tts_engine_requests_finished_total{{{SEL}}}[$__rate_interval]))"),
    ]),
    ("Healthy speech replicas", "none", [
        ("healthy", 'sum(ray_serve_deployment_replica_healthy{application=~"$application", deployment="SpeechReplica"})'),
    ]),
]

TEMPLATE_QUERIES = {
    "cluster": "label_values(ray_tts_model_info, ray_io_cluster)",
    "application": "label_values(ray_tts_model_info, application)",
    "replica": 'label_values(ray_tts_model_info{application=~"$application"}, replica)',
}

def _alert(name: str, value: str, condition: str, for_: str, severity: str, summary: str, expr: str = "") -> dict:
    """`value` is the watched quantity (a test checks it has live series); `condition` the
    comparison that fires (or a whole `expr`)."""
    return {"alert": name, "value": value, "expr": expr or f"{value} {condition}", "for": for_,
            "severity": severity, "summary": summary}


_HEALTHY = 'ray_serve_deployment_replica_healthy{deployment="SpeechReplica"}'
_ALL_FINISHED = "sum by (application, replica) (rate(ray_tts_engine_requests_finished_total[15m]))"
_LENGTH = 'sum by (application, replica) (rate(ray_tts_engine_requests_finished_total{reason="length"}[15m]))'
ALERTS: list[dict] = [
    _alert("TTSRealTimeFactorHigh",
           "histogram_quantile(0.95, sum by (le, application) (rate(ray_tts_real_time_factor_bucket[5m])))",
           "> 1", "5m", "warning", "Speech is generated slower than real time (RTF p95 > 1) for 5 minutes."),
    _alert("TTSTimeToFirstAudioHigh",
           "histogram_quantile(0.95, sum by (le, application) (rate(ray_tts_time_to_first_audio_seconds_bucket[5m])))",
           "> 2", "5m", "warning", "Time to first audio p95 above 2 s for 5 minutes."),
    _alert("TTSStreamsStutter",
           "(sum by (application) (rate(ray_tts_stream_underruns_total[5m])) or sum by (application) "
           "(rate(ray_tts_stream_min_slack_seconds_count[5m])) * 0) / sum by (application) "
           "(rate(ray_tts_stream_min_slack_seconds_count[5m]))",
           "> 0.01", "5m", "warning",
           "Listeners hear gaps: more than 1 underrun per 100 streamed responses for 5 minutes (streams fall "
           "behind real time: fewer streams per replica, or more replicas)."),
    _alert("TTSNoRealtimeHeadroom", "sum by (application) (ray_tts_realtime_headroom_streams)", "< 1", "10m",
           "warning", "No replica can take another real-time stream for 10 minutes: new interactive streams wait "
           "or get 429 (the autoscaler is at max_replicas, or cards are missing)."),
    _alert("TTSErrorRatioHigh",
           '(sum by (application) (rate(ray_tts_errors_total{code=~"5.."}[5m])) or sum by (application) '
           '(rate(ray_tts_requests_total[5m])) * 0) / sum by (application) (rate(ray_tts_requests_total[5m]))',
           "> 0.05", "5m", "critical", "More than 5% of speech requests fail with a server error."),
    _alert("TTSDeviceMemoryHigh",
           "max by (device, replica) (ray_tts_device_memory_used_bytes / ray_tts_device_memory_total_bytes)",
           "> 0.9", "5m", "warning", "A card's memory is more than 90% used."),
    _alert("TTSRunawayGeneration",
           f"({_LENGTH} or {_ALL_FINISHED} * 0) / {_ALL_FINISHED}",
           "> 0.5", "15m", "warning",
           "Most of a replica's requests run to the frame cap instead of ending: the model is not saying EOS."),
    _alert("TTSNoHealthyReplica", f"sum by (application) ({_HEALTHY})", "", "1m", "critical",
           "No healthy speech replica: speech requests cannot be served.",
           expr=f"(sum by (application) ({_HEALTHY}) < 1) or absent({_HEALTHY})"),
]
