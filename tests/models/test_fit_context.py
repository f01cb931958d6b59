"""The dialogue window (models/core/prompt.py::fit_context): the newest turns that fit the
model's positions with room for the new turn's audio, counted exactly as the prompt is built."""

import pytest

from models.core.prompt import build_prompt, fit_context
from models.params import Segment


def _turn(i: int, frames: int) -> Segment:
    return Segment(speaker=i % 2, text=f"Turn number {i} of the dialogue.", codes=((i,) * 32,) * frames)


def test_newest_turns_that_fit_with_room_for_the_new_turn(tiny):
    tokenizer, ids = tiny.tokenizer, tiny.special_ids
    voice = (Segment(speaker=0, text="The voice sample.", codes=((7,) * 32,) * 5),)
    turns = tuple(_turn(i, 10) for i in range(6))
    text, room = "And what do you say now?", 20
    everything = len(build_prompt(tokenizer, ids, text, 0, voice + turns))
    assert fit_context(tokenizer, voice, turns, text, 0, everything + room, room) == voice + turns  # all fit
    # one position short: the oldest turn drops out, the voice stays first
    assert fit_context(tokenizer, voice, turns, text, 0, everything + room - 1, room) == voice + turns[1:]
    window = fit_context(tokenizer, voice, turns, text, 0, everything + room - 40, room)
    assert window[0] == voice[0] and window[1:] == turns[-len(window) + 1:]  # the newest, in order
    assert len(build_prompt(tokenizer, ids, text, 0, window)) + room <= everything + room - 40


def test_no_room_for_the_text_alone_is_an_error(tiny):
    voice = (Segment(speaker=0, text="A sample.", codes=((7,) * 32,) * 50),)
    with pytest.raises(ValueError, match="positions"):
        fit_context(tiny.tokenizer, voice, (), "Hello.", 0, 40, 10)
