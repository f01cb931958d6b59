"""Same seed, same codes, across versions of the engine: the codes of a few seeded requests,
alone and in a mixed batch, equal those recorded in `fixtures/seeded_codes.json`.

The fixture holds integers only (codes, not audio). It was recorded with the engine of the
commit named in it, before the sampler drew a frame's noise for all 32 codebooks at once, so
a change of the sampler's numbers (or of the step's order of draws) fails here. Recorded with
csm-tiny in float32, eager steps (the tests' model); regenerate only for a deliberate,
versioned change of the audio a seed gives:

    python -m tests.models.test_same_codes <commit> > tests/models/fixtures/seeded_codes.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from models import Engine, EngineConfig, GenerationParams

FIXTURE = Path(__file__).parent / "fixtures" / "seeded_codes.json"
TEXT = "Same seed, same codes, whatever the version."
FRAMES = 6
# (request id, params) alone; the same ones then share one batch, joining at different steps.
ALONE = [
    ("default", dict(seed=1)),
    ("big-seed", dict(seed=2**62 + 12345, temperature=0.9, top_k=50)),
    ("hot-few", dict(seed=7, temperature=1.4, top_k=5)),
    ("whole-vocab", dict(seed=99, temperature=0.7, top_k=2051)),
    ("greedy", dict(seed=3, temperature=0.0)),
]
MIXED_JOIN_STEP = {"default": 0, "big-seed": 0, "hot-few": 2, "whole-vocab": 3, "greedy": 5}


def _engine(tiny, **cfg) -> Engine:
    return Engine(tiny, EngineConfig(max_num_seqs=8, max_seq_len=256, max_frames_cap=64, enforce_eager=True, **cfg))


def _params(kw: dict) -> GenerationParams:
    return GenerationParams(max_frames=FRAMES, **kw)


def _run(engine: Engine, join_step: dict[str, int], params: dict[str, dict]) -> dict[str, list[list[int]]]:
    pending = sorted(join_step, key=join_step.get)
    frames: dict[str, list[list[int]]] = {rid: [] for rid in join_step}
    step = 0
    while pending or engine.has_unfinished_requests():
        while pending and join_step[pending[0]] <= step:
            rid = pending.pop(0)
            engine.add_request(rid, f"{TEXT} ({rid})", _params(params[rid]))
        for out in engine.step():
            frames[out.request_id].extend(out.frames)
        step += 1
    return frames


def record(tiny) -> dict:
    """What the engine says now: each request alone, then all of them in one mixed batch."""
    params = dict(ALONE)
    alone = {rid: _run(_engine(tiny), {rid: 0}, params)[rid] for rid in params}
    mixed = _run(_engine(tiny), MIXED_JOIN_STEP, params)
    return {"alone": alone, "mixed": mixed}


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(FIXTURE.read_text())


def test_seeded_requests_alone_say_what_they_said_before(tiny, recorded):
    params = dict(ALONE)
    for rid, want in recorded["alone"].items():
        got = _run(_engine(tiny), {rid: 0}, params)[rid]
        assert got == want, f"{rid}: the codes of a seeded request changed"


def test_seeded_requests_in_a_mixed_batch_say_what_they_said_before(tiny, recorded):
    got = _run(_engine(tiny), MIXED_JOIN_STEP, dict(ALONE))
    assert got == recorded["mixed"]
    assert got == recorded["alone"]  # batch invariance, recorded too


if __name__ == "__main__":
    from models import load_model

    codes = record(load_model("csm-tiny", device="cpu", dtype="float32"))
    text = json.dumps({"recorded_at": sys.argv[1] if len(sys.argv) > 1 else "unknown", "model": "csm-tiny float32",
                       "frames": FRAMES, **codes}, indent=1)
    print(re.sub(r"\[\s+([\d,\s]+?)\s+\]", lambda m: "[" + ", ".join(m.group(1).split()).replace(",,", ",") + "]", text))
