"""The sampling parameters sent to the HTTP API reach the engine: `temperature`, `top_k` and
`speaker` through the real server give the audio of transformers' greedy codes (the oracle),
decoded by Mimi, and a request left at the defaults does not."""

import httpx
import numpy as np
import pytest
import torch

from models import EngineConfig
from models.core.prompt import build_prompt
from tests.local_server import local_server

TEXT = "Parameters reach the engine."
NUM_FRAMES = 6


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    config = EngineConfig(model="csm-tiny", device="cpu", dtype="float32", max_num_seqs=2)  # the oracle's dtype
    with local_server(str(tmp_path_factory.mktemp("voices")), config) as (base_url, _):
        yield base_url


def _api_pcm(url: str, **extra) -> np.ndarray:
    body = {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "pcm",
            "max_audio_seconds": NUM_FRAMES * 0.08, "seed": 11, **extra}
    r = httpx.post(url + "/v1/audio/speech", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, "<i2").astype(int)


def _oracle_pcm(tiny, speaker: int) -> np.ndarray:
    """transformers' greedy codes for the same prompt, decoded whole by Mimi, as int16."""
    prompt = build_prompt(tiny.tokenizer, tiny.special_ids, TEXT, speaker, ())
    with torch.no_grad():
        codes = tiny.model.generate(input_ids=torch.tensor([prompt.token_ids]), max_new_tokens=NUM_FRAMES,
                                    do_sample=False, depth_decoder_do_sample=False)[0]  # [frames, 32]
        assert codes.shape == (NUM_FRAMES, 32)
        pcm = tiny.model.codec_model.decode(codes.clamp(max=2047).T[None]).audio_values[0, 0].numpy()
    return np.rint(np.clip(pcm, -1, 1) * 32767).astype(int)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Same codes: PCM equal up to float rounding (streaming vs whole decode, a few LSB)."""
    return a.shape == b.shape and int(np.abs(a - b).max()) <= 4


def test_temperature_0_gives_the_greedy_oracle(url, tiny):
    assert _close(_api_pcm(url, temperature=0), _oracle_pcm(tiny, speaker=0))  # alloy is speaker 0


def test_top_k_1_gives_the_greedy_oracle_at_any_temperature(url, tiny):
    assert _close(_api_pcm(url, temperature=1.5, top_k=1), _oracle_pcm(tiny, speaker=0))


def test_speaker_reaches_the_prompt(url, tiny):
    pcm = _api_pcm(url, temperature=0, speaker=7)
    assert _close(pcm, _oracle_pcm(tiny, speaker=7))
    assert not _close(pcm, _oracle_pcm(tiny, speaker=0))


def test_control_default_sampling_is_not_greedy(url, tiny):
    """The comparison can fail: temperature 0.9, top-k 50 (the defaults) sample other codes."""
    assert not _close(_api_pcm(url), _oracle_pcm(tiny, speaker=0))
