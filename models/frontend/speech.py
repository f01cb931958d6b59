"""Text segments in, PCM out: segment chaining over the four parts of the frontend.

One stream = one voice: each text segment is generated with the voice's context plus the
previous segment (so the voice holds), and every frame goes through the stream's one
streaming Mimi row (so segments join without gaps, clicks or repeated audio). The HTTP edge
splits long input into segments (serve.text) and resolves the voice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import numpy as np

from ..codec.mimi_stream import StreamingMimiDecoder
from ..engine import Engine
from ..params import CODEBOOK_SIZE, FRAME_RATE_HZ, EngineStats, GenerationParams, Segment
from .admission import Admission
from .async_engine import AsyncEngine
from .decoder import MimiDecodeWorker
from .voices import VoiceRegistry


def chunk_frames(chunk_s: float) -> int:
    """Frames (80 ms each) per streamed PCM chunk for a target chunk duration."""
    return max(1, round(chunk_s * FRAME_RATE_HZ))


class SpeechPipeline:
    def __init__(self, engine: AsyncEngine, admission: Admission, voices: VoiceRegistry, decoder: MimiDecodeWorker,
                 chunk_frames: int = 3) -> None:
        self.engine, self.admission, self.voices, self.decoder = engine, admission, voices, decoder
        self.chunk_frames = chunk_frames

    @classmethod
    def start(cls, engine: Engine, max_waiting: int = 0, chunk_frames: int = 3,
              on_step: Callable[[EngineStats], None] | None = None) -> SpeechPipeline:
        """Start the engine's loop thread and the pipeline around it: one decoder row per KV
        slot (see admission.py), `max_waiting` streams may wait for one."""
        async_engine = AsyncEngine(engine, on_step=on_step)
        codec, rows = engine.loaded.model.codec_model, engine.config.max_num_seqs
        return cls(async_engine, Admission(rows, max_waiting), VoiceRegistry(async_engine, codec),
                   MimiDecodeWorker(StreamingMimiDecoder(codec, rows)), chunk_frames)

    async def stream(
        self,
        request_id: str,
        segments: list[str],
        voice: tuple[Segment, ...] = (),
        params: GenerationParams | None = None,
        on_segment_done: Callable[[int], None] | None = None,
    ) -> AsyncIterator[np.ndarray]:
        """Yield float32 PCM chunks (24 kHz mono) of about `chunk_frames` frames each.

        Segment i runs with `params.for_segment(i)` (seed + i) and the context `voice` plus
        segment i-1. Raises Overloaded (no row free, wait line full) or RequestError before
        the first chunk. `on_segment_done(i)` reports progress."""
        params = params or GenerationParams()
        async with self.admission.row() as row:
            is_first = True  # the row's first decode resets it
            previous: tuple[Segment, ...] = ()
            for i, text in enumerate(segments):
                frames: list[list[int]] = []
                pending: list[list[int]] = []
                async for out in self.engine.generate(f"{request_id}/{i}", text, params.for_segment(i), voice + previous):
                    frames += out.frames
                    pending += out.frames
                    if len(pending) >= self.chunk_frames:
                        yield await self.decoder.decode(row, is_first, pending)
                        pending, is_first = [], False
                if pending:
                    yield await self.decoder.decode(row, is_first, pending)
                    is_first = False
                codes = tuple(tuple(min(c, CODEBOOK_SIZE - 1) for c in f) for f in frames)
                previous = (Segment(speaker=params.speaker, text=text, codes=codes),) if codes else ()
                if on_segment_done is not None:
                    on_segment_done(i)

    def shutdown(self) -> None:
        self.engine.shutdown()
        self.decoder.close()
