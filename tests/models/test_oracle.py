"""Engine numerics against the oracle: transformers' CsmForConditionalGeneration."""

import copy

import torch

import models.runner.frame as frame_mod
from models import GenerationParams, Segment
from tests.conftest import run_to_end

TEXT = "The quick brown fox jumps over the lazy dog."


def _reference_codes(model, input_ids, n, **kw):
    out = model.generate(input_ids=input_ids, max_new_tokens=n, do_sample=False, depth_decoder_do_sample=False, **kw)
    return out[0]  # [frames, 32]


def test_first_frame_logits_match_transformers(tiny, make_engine, monkeypatch):
    """Backbone logits (codebook 0) and the depth decoder's logits for codebooks 1..31 of the
    first frame equal transformers' forward passes within float32 rounding."""
    seen = []

    def recording_sample(logits, *args):
        seen.append(logits.clone())
        return real_sample(logits, *args)

    real_sample = frame_mod.sample
    monkeypatch.setattr(frame_mod, "sample", recording_sample)
    engine = make_engine()
    req = engine.prepare("a", TEXT, GenerationParams(temperature=0, max_frames=1))
    engine.add_prepared(req)
    (frames, _), = run_to_end(engine).values()
    codes = torch.tensor(frames[0])

    model = tiny.model
    ids = torch.tensor([req.prompt.token_ids])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        ref0 = out.logits[0, -1]
        depth_in = torch.cat([torch.zeros(1, dtype=torch.long), codes[:-1]])[None]  # [0, c0..c30]
        ref_depth = model.depth_decoder(
            input_ids=depth_in, backbone_last_hidden_state=out.hidden_states[-1][:, -1]
        ).logits[0]  # [31, V]
    assert len(seen) == 32
    torch.testing.assert_close(seen[0][0], ref0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.stack([s[0] for s in seen[1:]]), ref_depth, rtol=1e-4, atol=1e-5)


def test_greedy_codes_equal_transformers_generate(tiny, make_engine):
    engine = make_engine()
    req = engine.prepare("a", TEXT, GenerationParams(temperature=0, max_frames=20))
    engine.add_prepared(req)
    (frames, reason), = run_to_end(engine).values()
    ref = _reference_codes(tiny.model, torch.tensor([req.prompt.token_ids]), 20)
    assert reason.value == "length"
    assert torch.equal(torch.tensor(frames), ref)


def test_greedy_with_audio_context_equals_transformers(tiny, make_engine):
    """A voice prompt (text + Mimi codes of a clip): same codes as transformers, which
    encodes the same clip itself from input_values."""
    model = tiny.model
    wave = torch.sin(torch.arange(24000) * 0.05) * 0.3 + 0.05 * torch.randn(24000)
    with torch.no_grad():
        ctx_codes = model.codec_model.encode(wave[None, None]).audio_codes[0].T  # [frames, 32]
    segment = Segment(speaker=1, text="Earlier words.", codes=tuple(map(tuple, ctx_codes.tolist())))
    engine = make_engine()
    req = engine.prepare("a", TEXT, GenerationParams(speaker=0, temperature=0, max_frames=12), context=(segment,))
    engine.add_prepared(req)
    (frames, _), = run_to_end(engine).values()
    ref = _reference_codes(
        model,
        torch.tensor([req.prompt.token_ids]),
        12,
        input_values=wave[None, None],
        input_values_cutoffs=torch.tensor([[24000]]),
        # as CsmProcessor returns it: without it generate() masks the audio positions,
        # because csm's pad id is the audio token id
        attention_mask=torch.ones(1, len(req.prompt), dtype=torch.long),
    )
    assert torch.equal(torch.tensor(frames), ref)


def test_eos_frame_ends_request_like_transformers(tiny, make_engine):
    """With all logits equal, greedy picks code 0 everywhere: an all-zero frame is EOS for
    transformers and for the engine, which reports eos and emits no audio frame for it."""
    model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.depth_decoder.codebooks_head.weight.zero_()
    loaded = copy.copy(tiny)
    loaded.model = model
    from models import Engine, EngineConfig

    engine = Engine(loaded, EngineConfig(max_num_seqs=2))
    req = engine.prepare("a", TEXT, GenerationParams(temperature=0, max_frames=10))
    engine.add_prepared(req)
    (frames, reason), = run_to_end(engine).values()
    ref = _reference_codes(model, torch.tensor([req.prompt.token_ids]), 10)
    assert ref.shape[0] == 1 and not ref.any()  # transformers stopped after the EOS frame
    assert reason.value == "eos" and frames == []
