"""The text-in WebSocket's splitter (serve/text_stream.py): pieces as soon as they are certain,
never a character lost, added or reordered, whatever the deltas."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from serve.text import normalize_whitespace, split_text
from serve.text_stream import StreamSplitter


def feed(text: str, cuts: list[int] | None = None, **kw) -> tuple[list[list[str]], StreamSplitter]:
    """The pieces each delta made ready (one delta per character unless `cuts` are given)."""
    splitter = StreamSplitter(**kw)
    bounds = [0, *sorted({c for c in (cuts or range(1, len(text))) if 0 < c < len(text)}), len(text)]
    return [splitter.append(text[a:b]) for a, b in itertools.pairwise(bounds)], splitter


def test_a_sentence_is_spoken_as_soon_as_its_end_is_certain():
    steps, splitter = feed("Hello there. How are")
    ready_at = next(i for i, pieces in enumerate(steps) if pieces)
    assert steps[ready_at] == ["Hello there."] and ready_at == len("Hello there.") - 1  # at its full stop
    assert splitter.pending == "How are"


def test_abbreviations_decimals_and_numbers_do_not_cut():
    steps, splitter = feed("I met Dr. Smith at 3.14 pm and paid $2.50 for it. Then")
    assert [p for s in steps for p in s] == ["I met Dr. Smith at 3.14 pm and paid $2.50 for it."]
    steps, splitter = feed("It costs $2.")  # "$2." may still become "$2.50": not yet
    assert not any(steps) and splitter.pending == "It costs $2."
    assert splitter.append("50 today. ") == ["It costs $2.50 today."]


def test_a_long_sentence_is_cut_after_a_clause_mark_once_it_has_enough_words():
    text = "One two three four five six seven eight nine ten eleven twelve thirteen, fourteen fifteen"
    pieces = [p for s in feed(text, clause_min_words=12)[0] for p in s]
    assert pieces == ["One two three four five six seven eight nine ten eleven twelve thirteen,"]
    assert not any(feed("One, two, three, four", clause_min_words=12)[0])  # short: wait for the sentence


def test_flush_speaks_what_is_pending_and_clear_drops_it():
    _, splitter = feed("Half a sent")
    assert splitter.flush() == ["Half a sent"] and splitter.pending == ""
    _, splitter = feed("Never mind this")
    assert splitter.clear() == "Never mind this" and splitter.flush() == []


def test_text_sent_whole_is_cut_as_the_http_path_cuts_it():
    text = ("The first sentence is long enough that two of them do not fit together in one piece of the long "
            "text path, which packs up to two hundred and fifty characters. " * 2 + "Short end.")
    splitter = StreamSplitter(max_chars=250)
    assert splitter.append(text) + splitter.flush() == split_text(text, 250)


_TEXT = st.lists(st.sampled_from(list("abc XYZ.,;!?$1234\n\t\"'-。…") + ["Dr. ", "e.g. ", " 3.14", "Hello there. "]),
                 max_size=120).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_TEXT, cuts=st.lists(st.integers(0, 400), max_size=40), max_chars=st.integers(20, 120),
       clause=st.integers(1, 15))
def test_pieces_then_pending_are_the_text_and_fit(text, cuts, max_chars, clause):
    steps, splitter = feed(text, cuts, max_chars=max_chars, clause_min_words=clause)
    pieces = [p for s in steps for p in s] + splitter.flush()
    norm, pos = normalize_whitespace(text), 0  # in order, back to back, one space or nothing between
    for piece in pieces:
        assert norm.startswith(piece, pos), (norm, pieces)
        pos += len(piece)
        pos += pos < len(norm) and norm[pos] == " "
    assert pos == len(norm), (norm, pieces)
    assert all(p and p == p.strip() and len(p) <= max_chars for p in pieces)
