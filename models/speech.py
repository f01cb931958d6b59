"""Text segments in, PCM out: one voice, each segment generated with the previous one as
context (so the voice holds), all decoded by one streaming Mimi row per stream (so the
segments join without gaps, clicks or repeated audio).

Mimi runs off the engine's step loop: chunks due from many streams at once are decoded
together in one batched call on the pipeline's decode thread (and on accelerators on their
own device stream), so the next engine step is not held up by audio decoding.

The HTTP edge splits long input into segments (serve.text) and resolves the voice; this
module only needs the voice's context segments, e.g. from `encode_clip`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .async_engine import AsyncEngine
from .mimi_stream import CODEBOOK_SIZE, StreamingMimiDecoder
from .params import FRAME_RATE_HZ, GenerationParams, Segment


class NoStreamCapacity(RuntimeError):
    """Every decoder row is streaming: the caller should retry later (503/429)."""


@torch.inference_mode()
def encode_clip(codec, pcm: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """Mimi codes of a whole 24 kHz mono clip, as frames of 32 codes (encoded once per voice)."""
    param = next(codec.parameters())
    wave = torch.as_tensor(np.asarray(pcm, dtype=np.float32), device=param.device).to(param.dtype)
    codes = codec.encode(wave[None, None]).audio_codes[0]  # [32, frames]
    return tuple(map(tuple, codes.T.tolist()))


def chunk_frames(chunk_s: float) -> int:
    """Frames (80 ms each) per streamed PCM chunk for a target chunk duration."""
    return max(1, round(chunk_s * FRAME_RATE_HZ))


class SpeechPipeline:
    def __init__(self, engine: AsyncEngine, max_streams: int, chunk_frames: int = 3) -> None:
        self.engine = engine
        self.chunk_frames = chunk_frames
        self.decoder = StreamingMimiDecoder(engine.engine.loaded.model.codec_model, max_streams)
        self._free_rows = list(range(max_streams))
        device = self.decoder.device
        self._side_stream = torch.get_device_module(device).Stream() if device.type != "cpu" else None
        self._pending: list[tuple[int, bool, torch.Tensor, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None
        # One thread of its own: decodes are serialised anyway, and one thread keeps one
        # malloc arena (varying batch shapes on many pool threads fragment several).
        self._decode_thread = ThreadPoolExecutor(1, thread_name_prefix="mimi-decode")
        self.num_decode_calls = 0  # batched decoder calls (<= chunks decoded)
        self.voices: dict[str, tuple[Segment, ...]] = {}  # voice id -> its context segments

    async def add_voice(self, voice_id: str, speaker: int, clips: list[tuple[np.ndarray, str]]) -> tuple[Segment, ...]:
        """Encode a voice's reference clips with Mimi once, and cache the backbone KV of its
        prompt in the engine, so its requests start without re-prefilling it."""
        codec = self.engine.engine.loaded.model.codec_model
        context = []
        for pcm, transcript in clips:
            codes = await asyncio.to_thread(encode_clip, codec, pcm)
            context.append(Segment(speaker=speaker, text=transcript, codes=codes))
        if context:
            await self.engine.add_prefix(tuple(context))
        self.voices[voice_id] = tuple(context)
        return self.voices[voice_id]

    async def remove_voice(self, voice_id: str) -> None:
        """Forget a voice and its cached prompt prefix."""
        context = self.voices.pop(voice_id, ())
        if context:
            await self.engine.remove_prefix(context)

    async def stream(
        self,
        request_id: str,
        segments: list[str],
        voice: tuple[Segment, ...] = (),
        params: GenerationParams | None = None,
        on_segment_done: Callable[[int], None] | None = None,
    ) -> AsyncIterator[np.ndarray]:
        """Yield float32 PCM chunks (24 kHz mono) of about `chunk_frames` frames each.

        `params.context` is ignored: the context is `voice` plus the previous segment.
        With a seed, segment i uses seed + i. `on_segment_done(i)` reports progress."""
        params = params or GenerationParams()
        if not self._free_rows:
            raise NoStreamCapacity("all audio streams are busy")
        row = self._free_rows.pop()
        fresh = True  # the row's first decode resets it, in order with its last user's decodes
        try:
            previous: tuple[Segment, ...] = ()
            for i, text in enumerate(segments):
                update = {"context": voice + previous}
                if params.seed is not None:
                    update["seed"] = params.seed + i
                frames: list[list[int]] = []
                pending: list[list[int]] = []
                async for out in self.engine.generate(f"{request_id}/{i}", text, params.model_copy(update=update)):
                    frames += out.frames
                    pending += out.frames
                    if len(pending) >= self.chunk_frames:
                        yield await self._decode(row, fresh, pending)
                        pending, fresh = [], False
                if pending:
                    yield await self._decode(row, fresh, pending)
                    fresh = False
                codes = tuple(tuple(min(c, CODEBOOK_SIZE - 1) for c in f) for f in frames)
                previous = (Segment(speaker=params.speaker, text=text, codes=codes),) if codes else ()
                if on_segment_done is not None:
                    on_segment_done(i)
        finally:
            self._free_rows.append(row)

    async def _decode(self, row: int, reset: bool, frames: list[list[int]]) -> np.ndarray:
        """PCM for `frames` on decoder row `row`, decoded in a batch with whatever other
        streams have due at the same time."""
        future = asyncio.get_running_loop().create_future()
        self._pending.append((row, reset, torch.tensor(frames).T, future))  # codes [32, T]
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        """Decode everything pending, one batched call per chunk length (at most one chunk
        per row per call), until nothing is left. The only place the decoder is touched."""
        while self._pending:
            batch, later = [], []
            length = self._pending[0][2].shape[1]
            for item in self._pending:
                fits = item[2].shape[1] == length and all(item[0] != other[0] for other in batch)
                (batch if fits else later).append(item)
            self._pending = later
            try:
                pcm = await asyncio.get_running_loop().run_in_executor(self._decode_thread, self._run_decoder, batch)
            except Exception as e:  # the waiting streams raise it
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            for (*_, future), out in zip(batch, pcm):
                if not future.done():  # a stream that went away does not wait any more
                    future.set_result(out)

    def _run_decoder(self, batch: list) -> list[np.ndarray]:
        rows = [row for row, *_ in batch]
        with torch.inference_mode(), self._stream_context():
            resets = [row for row, reset, *_ in batch if reset]
            if resets:
                self.decoder.reset(resets)
            pcm = self.decoder.decode(rows, torch.stack([codes for _, _, codes, _ in batch]))
            self.num_decode_calls += 1
            return list(pcm.float().cpu().numpy())  # .cpu() waits for this stream only

    def _stream_context(self):
        if self._side_stream is None:
            return contextlib.nullcontext()
        return torch.get_device_module(self.decoder.device).stream(self._side_stream)
