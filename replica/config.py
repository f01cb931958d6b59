"""A replica's static settings (the engine's are models.EngineConfig)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ReplicaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chunk_s: float = Field(0.24, ge=0.08, le=2.0, description=(
        "audio per streamed chunk in steady state; a stream's first chunk is one frame (80 ms), the next ones grow "
        "with the audio already out (1 + margin x frames out) up to this"))
    context_cache_bytes: int = Field(
        512 * 2**20, ge=0,
        description="bytes of prefix KV the context cache keeps (voices, conversations); on a card this memory "
        "competes with the decode slots",
    )
    conversation_refill: float = Field(0.5, gt=0.0, le=1.0, description=(
        "when a conversation outgrows the model's context, its window slides to fill this share of the positions "
        "for turns, so the next turns extend it (their context stays cached) instead of sliding and recomputing "
        "it every turn; 1: always the most turns that fit"))
    realtime_admission: bool = Field(True, description=(
        "admit an interactive stream only while every interactive stream stays real time (learned step times, "
        "the streams' playback clocks); off: max_num_seqs is the only bound"))
    realtime_margin: float = Field(0.2, ge=0.0, le=5.0, description=(
        "real-time headroom kept: a step must take at most 80 ms / (1 + margin); the stream's chunks grow as "
        "fast as a listener's buffer does at that step time (replica/pipeline.py next_chunk_frames)"))
    admission_wait_s: float = Field(0.25, gt=0, le=5.0, description=(
        "longest an interactive stream waits to start, and only when headroom is expected that soon (a stream "
        "about to end); otherwise it is refused at once with 429 / 503 + a Retry-After from the running streams' "
        "remaining audio (replica/admission.py)"))
    batch_wait_s: float = Field(300.0, gt=0, description=(
        "longest a batch-priority stream waits for a row before 429 / 503 + Retry-After"))
    max_batch_rows: int | None = Field(None, ge=0, description=(
        "rows batch-priority streams may hold at once; default half of max_num_seqs (at least 1)"))
    engine_threads: int | None = Field(None, ge=1, le=256, description=(
        "intra-op threads of the engine's step loop; default: 1 on an accelerator, on cpu the process's torch "
        "threads (OMP_NUM_THREADS, or Ray's num_cpus) less one for the decoder and the event loop"))
    decode_threads: int | None = Field(None, ge=1, le=256, description="intra-op threads of the Mimi decoder; default 1")
