"""On a real accelerator (run with `pytest -m accel` on a GPU/NPU host; `make test` deselects
these): the engine's numerics there against transformers on the same device."""

import pytest
import torch

from models import Engine, EngineConfig, GenerationParams, load_model
from models.loading.device import is_npu_available
from tests.conftest import run_to_end

pytestmark = pytest.mark.accel


@pytest.fixture(scope="module")
def accel_tiny():
    if torch.cuda.is_available():
        return load_model("csm-tiny", device="cuda", dtype="float32")
    if is_npu_available():
        return load_model("csm-tiny", device="npu", dtype="float32")
    pytest.skip("no NPU or CUDA device here")


def test_greedy_codes_equal_transformers_on_device(accel_tiny):
    engine = Engine(accel_tiny, EngineConfig(max_num_seqs=4))
    req = engine.prepare("a", "Same codes on the card.", GenerationParams(temperature=0, max_frames=12))
    engine.add_prepared(req)
    frames, _ = run_to_end(engine)["a"]
    ids = torch.tensor([req.prompt.token_ids], device=accel_tiny.device)
    ref = accel_tiny.model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, depth_decoder_do_sample=False)
    assert torch.equal(torch.tensor(frames), ref[0].cpu())


def test_captured_steps_equal_eager_on_device(accel_tiny):
    """Device graphs (CUDA graphs / NPU graphs, `capture: auto`) against eager steps on the
    card: same codes for staggered sampled and greedy requests."""
    from tests.models.test_capture import _run

    eager = Engine(accel_tiny, EngineConfig(max_num_seqs=4, max_seq_len=512, max_frames_cap=200, enforce_eager=True))
    eager.warm_up()
    captured = Engine(accel_tiny, EngineConfig(max_num_seqs=4, max_seq_len=512, max_frames_cap=200))
    captured.warm_up()
    before = captured.stats()
    assert before.capture_mode == "graphs"
    assert _run(captured) == _run(eager)
    after = captured.stats()
    decodes = after.num_captured_decodes - before.num_captured_decodes
    frames = after.num_captured_frames - before.num_captured_frames
    assert decodes > 5 and frames > 5  # the captured path really ran
