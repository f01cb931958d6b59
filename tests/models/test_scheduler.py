"""The scheduler alone, without a model or torch: FIFO admission, the prefill budget, slot
reuse, and how runner outputs end requests."""

import subprocess
import sys

import pytest

from models.core.prompt import PromptTokens
from models.core.request import Request
from models.core.scheduler import RunnerOutput, Scheduler
from models.params import GenerationParams

FRAME = [5] * 32
EOS = [0] * 31 + [7]  # codebooks 0..30 all zero ends speech (codebook 31 does not count)


def _req(rid: str, prompt_len: int = 10, max_frames: int = 100) -> Request:
    return Request(rid, PromptTokens(tuple(range(prompt_len)), ()), GenerationParams(), seed=0, max_frames=max_frames)


def _step(sched: Scheduler, codes_for=lambda r: FRAME):
    """Schedule, 'run' (every due request gets codes_for(request)), update."""
    out = sched.schedule()
    due = [*out.decodes, *(c.request for c in out.prefills if c.is_last)]
    return out, sched.update_from_output(out, RunnerOutput(due, [codes_for(r) for r in due]))


def test_scheduler_imports_no_torch():
    code = "import sys, models.core.scheduler, models.params; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_fifo_admission_into_the_lowest_free_slots():
    sched = Scheduler(num_slots=2, max_prefill_tokens=512)
    for rid in "abc":
        sched.add(_req(rid))
    out, _ = _step(sched)
    assert [c.request.request_id for c in out.prefills] == ["a", "b"]
    assert [r.slot for r in sched.running] == [0, 1] and [r.request_id for r in sched.waiting] == ["c"]


def test_prefill_budget_is_split_in_admission_order():
    sched = Scheduler(num_slots=3, max_prefill_tokens=512)
    for rid, n in (("a", 300), ("b", 300), ("c", 50)):
        sched.add(_req(rid, prompt_len=n))
    out, outputs = _step(sched)
    assert [(c.request.request_id, c.start, c.length) for c in out.prefills] == [("a", 0, 300), ("b", 0, 212)]
    assert [o.request_id for o in outputs] == ["a"]  # only a's prompt is complete: it got a frame
    out, _ = _step(sched)
    assert [r.request_id for r in out.decodes] == ["a"]
    assert [(c.request.request_id, c.start, c.length) for c in out.prefills] == [("b", 212, 88), ("c", 0, 50)]
    assert sched.num_prompt_tokens_total == 650


def test_finished_slots_are_reused_by_the_next_waiting_request():
    sched = Scheduler(num_slots=1, max_prefill_tokens=64)
    sched.add(_req("a", max_frames=2))
    sched.add(_req("b", max_frames=1))
    _, first = _step(sched)
    _, second = _step(sched)
    assert second[-1].request_id == "a" and second[-1].finish_reason.value == "length" and second[-1].frames
    out, third = _step(sched)
    assert [c.request.slot for c in out.prefills] == [0] and third[0].request_id == "b"
    assert not sched.has_unfinished() and sched.num_free_slots == 1


def test_eos_frame_ends_the_request_without_audio():
    sched = Scheduler(num_slots=1, max_prefill_tokens=64)
    sched.add(_req("a"))
    _step(sched)
    _, outputs = _step(sched, codes_for=lambda r: EOS)
    assert len(outputs) == 1 and outputs[0].is_finished and outputs[0].finish_reason.value == "eos"
    assert outputs[0].frames == [] and sched.num_free_slots == 1


def test_abort_frees_the_slot_now_and_is_reported_once():
    sched = Scheduler(num_slots=1, max_prefill_tokens=64)
    sched.add(_req("a"))
    sched.add(_req("b"))
    _step(sched)
    sched.abort("a")
    sched.abort("a")  # twice: still one report
    sched.abort("unknown")
    out, outputs = _step(sched)
    assert [o.request_id for o in outputs if o.is_finished] == ["a"] and outputs[0].finish_reason.value == "abort"
    assert [c.request.request_id for c in out.prefills] == ["b"]  # b took a's slot in the same step


def test_duplicate_ids_are_refused_and_abort_all_reports_nothing():
    sched = Scheduler(num_slots=1, max_prefill_tokens=64)
    sched.add(_req("a"))
    sched.add(_req("b"))
    with pytest.raises(ValueError, match="request_id"):
        sched.add(_req("a"))
    _step(sched)
    assert sorted(sched.abort_all()) == ["a", "b"]
    assert not sched.has_unfinished() and sched.num_free_slots == 1
    assert sched.update_from_output(sched.schedule(), RunnerOutput()) == []


def test_how_requests_end_is_counted_once_each():
    """eos, length, abort (reported at the next update) and error (abort_all after a failed
    step) each count once: the basis of the runaway-generation alert."""
    sched = Scheduler(num_slots=4, max_prefill_tokens=512)
    for rid, max_frames in (("eos", 100), ("length", 2), ("abort", 100)):
        sched.add(_req(rid, max_frames=max_frames))
    _step(sched)  # prefill: everyone gets a first frame
    sched.abort("abort")
    _step(sched, lambda r: EOS if r.request_id == "eos" else FRAME)
    assert sched.num_finished == {"eos": 1, "length": 1, "abort": 1, "error": 0}
    sched.add(_req("x"))
    sched.add(_req("y"))
    _step(sched)
    assert sched.abort_all() == ["x", "y"]
    _step(sched)
    assert sched.num_finished == {"eos": 1, "length": 1, "abort": 1, "error": 2}


def test_batch_rows_beyond_what_batch_rows_allows_are_paused_keeping_their_slot():
    limits = []
    sched = Scheduler(num_slots=4, max_prefill_tokens=512,
                      batch_rows=lambda n: limits.append(n) or (None if n == 0 else 2 - n))
    a, b, c = _req("a"), _req("b"), _req("c")
    b.priority = c.priority = "batch"
    for r in (b, c):
        sched.add(r)
    out, _ = _step(sched)
    assert {p.request.request_id for p in out.prefills} == {"b", "c"} and sched.num_paused == 0  # none interactive
    sched.add(a)
    out, _ = _step(sched)  # a interactive: 1 batch row may run beside it (the older one), c pauses
    assert [p.request.request_id for p in out.prefills] == ["a"] and [r.request_id for r in out.decodes] == ["b"]
    assert sched.num_paused == 1 and c.slot >= 0 and c.num_frames == 1
    out, _ = _step(sched)
    assert [r.request_id for r in out.decodes] == ["b", "a"] and c.num_frames == 1  # admission order
    sched.abort("a")
    out, _ = _step(sched)  # the interactive row left: c resumes
    assert [r.request_id for r in out.decodes] == ["b", "c"] and sched.num_paused == 0
    assert limits[-1] == 0
