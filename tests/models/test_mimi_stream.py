"""Streaming Mimi decode equals one whole MimiModel.decode, for any chunking and for rows
that join and leave mid-stream; plain chunk-by-chunk decode does not (so the test can fail)."""

import pytest
import torch

from models.codec.mimi_stream import StreamingMimiDecoder


@pytest.fixture(scope="module")
def codec(tiny):
    return tiny.model.codec_model


def _codes(n_frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2048, (1, 32, n_frames), generator=g)


def _whole(codec, codes):
    with torch.no_grad():
        return codec.decode(codes).audio_values[:, 0]  # [1, T * 1920]


def _stream(dec, row, codes, chunk):
    parts = [dec.decode([row], codes[..., i : i + chunk]) for i in range(0, codes.shape[-1], chunk)]
    return torch.cat(parts, dim=-1)


@pytest.mark.parametrize("chunk", [1, 3, 7, 40])
def test_any_chunking_equals_whole_decode(codec, chunk):
    codes = _codes(40, seed=chunk)
    dec = StreamingMimiDecoder(codec, num_rows=2)
    out = _stream(dec, 1, codes, chunk)
    assert out.shape == (1, 40 * 1920)
    torch.testing.assert_close(out, _whole(codec, codes), atol=1e-4, rtol=0)


def test_past_the_sliding_window(codec):
    """140 frames = 280 transformer steps: the 250-step window must slide like the whole decode."""
    codes = _codes(140, seed=11)
    dec = StreamingMimiDecoder(codec, num_rows=1)
    torch.testing.assert_close(_stream(dec, 0, codes, 5), _whole(codec, codes), atol=1e-4, rtol=0)


def test_plain_chunked_decode_clicks(codec):
    codes = _codes(12, seed=3)
    with torch.no_grad():
        naive = torch.cat([codec.decode(codes[..., i : i + 1]).audio_values[:, 0] for i in range(12)], dim=-1)
    assert (naive - _whole(codec, codes)).abs().max() > 1e-3


def test_rows_join_and_leave_independently(codec):
    """Three rows share each batched call; they start at different steps, one resets and
    starts a new stream, one leaves early. Each equals its own whole decode."""
    a, b, c, d = (_codes(n, seed=s) for n, s in ((12, 1), (8, 2), (5, 3), (6, 4)))
    dec = StreamingMimiDecoder(codec, num_rows=4)
    out = {k: [] for k in "abcd"}
    plan = {"a": (0, a, 0), "b": (1, b, 3), "c": (2, c, 2), "d": (2, d, 7)}  # row, codes, first step
    for step in range(13):
        live = [(k, row, codes, step - start) for k, (row, codes, start) in plan.items()
                if 0 <= step - start < codes.shape[-1]]
        for k, row, _, i in live:
            if i == 0:
                dec.reset([row])
        batch = torch.cat([codes[..., i : i + 1] for _, _, codes, i in live])
        pcm = dec.decode([row for _, row, _, _ in live], batch)
        for (k, *_), wave in zip(live, pcm):
            out[k].append(wave)
    for k, (_, codes, _) in plan.items():
        torch.testing.assert_close(torch.cat(out[k])[None], _whole(codec, codes), atol=1e-4, rtol=0)


def test_codes_above_codebook_are_clamped(codec):
    codes = _codes(2, seed=5)
    codes[0, 3, 1] = 2050  # the model's pad id: must never index Mimi's codebooks
    dec = StreamingMimiDecoder(codec, num_rows=1)
    assert torch.isfinite(dec.decode([0], codes)).all()


def test_decoded_audio_depends_on_the_codes(codec):
    """The built-in codec has random (not zero) codebooks, so the equality tests above would
    catch codes routed to the wrong row or frame."""
    a, b = _whole(codec, _codes(4, seed=1)), _whole(codec, _codes(4, seed=2))
    assert (a - b).abs().max() > 1e-2
