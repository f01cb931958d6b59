"""Tests for serve.text.split_text: sentence-aligned segmentation of long TTS input."""

import subprocess
import sys
from pathlib import Path

import pysbd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve.text import _segments, normalize_whitespace, split_text

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def locate(norm: str, segments: list[str]) -> list[tuple[int, int]]:
    """Offsets of ``segments`` in ``norm``, asserting they tile it in order: back to back
    or one space apart, covering all of it (no character lost, added or reordered)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for seg in segments:
        if spans and norm.startswith(" ", pos):
            pos += 1
        assert norm.startswith(seg, pos), f"segment {seg!r} not found at offset {pos} of {norm!r}"
        spans.append((pos, pos + len(seg)))
        pos += len(seg)
    assert pos == len(norm), f"text after offset {pos} was dropped: {norm[pos:]!r}"
    return spans


def check_invariants(text: str, segments: list[str], max_chars: int, min_chars: int = 40) -> list[tuple[int, int]]:
    """Assert every guarantee of split_text for one call; returns the segment offsets."""
    norm = " ".join(text.split())
    assert normalize_whitespace(text) == norm
    if not norm:
        assert segments == []
    for seg in segments:
        assert seg, "empty segment"
        assert seg == seg.strip(), f"unstripped segment {seg!r}"
        assert len(seg) <= max_chars, f"{len(seg)} > {max_chars}: {seg!r}"
    spans = locate(norm, segments)
    effective_min = min(min_chars, max_chars // 2)
    for (start, end), (next_start, next_end) in zip(spans, spans[1:]):
        if next_end - start <= max_chars:  # neighbours that would fit together...
            shortest = min(end - start, next_end - next_start)
            assert shortest >= effective_min, "a short segment was not merged with its neighbour"
    return spans


def assert_greedy(segments: list[str], max_chars: int) -> None:
    """No two neighbouring segments would fit together (no over-long sentences in the input)."""
    for seg, nxt in zip(segments, segments[1:]):
        assert len(seg) + 1 + len(nxt) > max_chars, (seg, nxt)


# --- sentence boundaries (pysbd) -----------------------------------------------------

ONE_SENTENCE_EACH = {
    "decimals and money": [
        "The value of pi is roughly 3.14 and rarely more.",
        "A coffee costs $2.50 at the station.",
        "Version 2.0.1 shipped today at 9.30 sharp.",
    ],
    "abbreviations": [
        "Dr. Watson met Mr. Holmes at the station.",
        "They visited the U.S. last year with Mrs. Hudson.",
        "Bring some fruit, e.g. apples or pears, to the picnic.",
    ],
    "initials": [
        "The novel was written by J. R. R. Tolkien in Oxford.",
        "Later that year, George W. Bush gave a short speech.",
    ],
    "ellipsis": [
        "I was thinking... maybe we should leave early.",
        "She paused for a moment and then kept reading.",
    ],
    "quoted speech": [
        'She said, "Stop right there. Do not move."',
        "Then she walked away without another word.",
        '"It is late," he replied, "and I am tired."',
    ],
}


@pytest.mark.parametrize("sentences", ONE_SENTENCE_EACH.values(), ids=ONE_SENTENCE_EACH.keys())
def test_tricky_periods_do_not_split_sentences(sentences):
    text = " ".join(sentences)
    # No two sentences fit together, so each segment must be exactly one sentence.
    assert split_text(text, max_chars=max(map(len, sentences)), min_chars=0) == sentences
    # With room to spare everything stays together.
    assert split_text(text, max_chars=len(text)) == [text]


PARAGRAPH_SENTENCES = [
    "Good morning, and welcome to the quarterly earnings call for Northwind Traders.",
    "Revenue grew 3.14 percent year over year, to $2.50 billion, while operating costs fell slightly.",
    "Dr. Smith, our chief financial officer, will walk you through the numbers in a moment.",
    "Our largest markets remain the U.S. and Canada, e.g. Toronto, Vancouver and Montreal.",
    "Mr. J. R. Hartley joined the board in March.",
    "We expected this... but not quite so soon.",
    '"This is the best quarter we have ever had," said Ms. Lee, who leads the retail division.',
    "Shipping times improved by 12.5 percent.",
    "What does that mean for customers?",
    "It means faster deliveries!",
    "Looking further ahead, we plan to expand our distribution network into three new regions, "
    "hire roughly four hundred additional staff across our warehouses and offices, invest in "
    "automation that reduces manual sorting by half; and, if conditions allow, open a second "
    "research center dedicated to sustainable packaging materials and low-emission logistics.",
]


def long_paragraph(limit: int = 4096) -> tuple[str, set[int]]:
    """Realistic English of at most ``limit`` chars, and its sentence end offsets."""
    parts: list[str] = []
    ends: set[int] = set()
    length = -1
    while True:
        for sentence in PARAGRAPH_SENTENCES:
            if length + 1 + len(sentence) > limit:
                return " ".join(parts), ends
            parts.append(sentence)
            length += 1 + len(sentence)
            ends.add(length)


@pytest.mark.parametrize("max_chars", [120, 250, 400])
def test_4096_char_paragraph_ends_segments_at_sentence_boundaries(max_chars):
    text, sentence_ends = long_paragraph()
    assert 3900 < len(text) <= 4096
    segments = split_text(text, max_chars=max_chars)
    spans = check_invariants(text, segments, max_chars)
    assert len(segments) >= len(text) // max_chars
    min_chars = 40
    for (start, end), seg in zip(spans, segments):
        if end in sentence_ends:
            continue
        # Only a sentence longer than the limit ends mid-segment, at a clause or word break...
        assert seg[-1] in ",;:" or text[end] == " ", seg
        assert not any(end < b <= start + max_chars for b in sentence_ends), seg
        # ...and the segment holds no sentence boundary, unless what precedes it was too
        # short to stand alone (min_chars) and was merged in.
        assert all(b - start < min_chars for b in sentence_ends if start < b < end), seg


# --- normalisation and edge cases ------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "\n\t  \r\n", "\u3000\u00a0\u2028"])
def test_empty_or_whitespace_only_returns_nothing(text):
    assert split_text(text) == []


def test_whitespace_is_collapsed_and_stripped():
    assert split_text("  Hello,\n\n  world.\tBye.  ") == ["Hello, world. Bye."]


@pytest.mark.parametrize("kwargs", [{"max_chars": 0}, {"min_chars": -1}, {"language": "xx"}])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        split_text("Some text.", **kwargs)


def test_min_chars_above_max_chars_is_clamped():
    check_invariants("a" * 100, split_text("a" * 100, max_chars=30, min_chars=1000), 30)


@pytest.mark.parametrize(
    "text",
    [
        "Price ∯ 5. Next ȸ sentence. ♨ Done ☝ here. ✂ Cut ⎋ it. ᓰ ᓱ ᓳ ᓴ ᓷ ᓸ.",  # pysbd's marker symbols
        "Completely orange☝︎A new album was also released while being orange2014/12.",
        "Maissen se chargea du reste .. Logiquement, il partit. Puis .... rien.",
        "As shown in Fig. ?? the curve rises. T stands for the transpose.",
    ],
)
def test_inputs_that_make_pysbd_drop_text_lose_nothing(text):
    for max_chars in (20, 40, 250):
        check_invariants(text, split_text(text, max_chars=max_chars, min_chars=5), max_chars, 5)


def test_pysbd_marker_symbols_do_not_hide_sentence_boundaries():
    # Unmasked, pysbd 0.3.4 segments the first sentence to nothing at all.
    sentences = ["Completely orange☝︎A new album came out.", "It sold well in ∯ stores ♨ everywhere."]
    assert split_text(" ".join(sentences), max_chars=60, min_chars=0) == sentences


def test_pysbd_failure_falls_back_to_weaker_boundaries(monkeypatch):
    def fail(self, text):
        raise RuntimeError("pysbd bug")

    monkeypatch.setattr(pysbd.Segmenter, "segment", fail)
    text = "First sentence here. Second one, with a comma."
    assert split_text(text, max_chars=30) == ["First sentence here. Second", "one, with a comma."]


def test_pysbd_boundary_inside_a_url_is_ignored():
    # pysbd splits after the "?" of the query string.
    text = "See https://example.com/path?q=1. Next one."
    assert split_text(text, max_chars=30) == ["See", "https://example.com/path?q=1.", "Next one."]


# --- long sentences: weaker boundaries, hard cuts --------------------------------------


def test_long_sentence_splits_at_clause_punctuation():
    sentence = (
        "We packed the tents, the stoves and the food; then we drove north for hours, "
        "stopping only for fuel: nobody wanted to waste daylight on the first day of the trip."
    )
    assert split_text(sentence, max_chars=80, min_chars=20) == [
        "We packed the tents, the stoves and the food;",
        "then we drove north for hours, stopping only for fuel:",
        "nobody wanted to waste daylight on the first day of the trip.",
    ]


def test_long_sentence_cut_prefers_stronger_boundary_but_no_scraps():
    clause = "Whatever the weather does tomorrow, we will go out walking,"
    rest = " ".join(["onward"] * 40) + "."
    # The "," after the clause beats the spaces after it.
    assert split_text(f"{clause} {rest}", max_chars=200, min_chars=40)[0] == clause
    # The ";" after "Ok" would leave a 3-char scrap that nothing fits with (the next
    # clause ends just past the limit), so a later space is used instead.
    long_clause = " ".join(["walking"] * 24) + " going,"
    segments = split_text(f"Ok; {long_clause} {rest}", max_chars=200, min_chars=40)
    assert segments[0].startswith("Ok; walking")
    assert all(len(seg) >= 40 for seg in segments)


def test_long_sentence_splits_at_dash_before_plain_space():
    sentence = "It was late — far too late to call anyone — so we waited until the morning came."
    assert split_text(sentence, max_chars=50, min_chars=20) == [
        "It was late — far too late to call anyone —",
        "so we waited until the morning came.",
    ]


def test_punctuation_inside_numbers_is_not_a_cut_point():
    text = " ".join(["1,000,000 at 10:30:15"] * 12)
    segments = split_text(text, max_chars=50, min_chars=10)
    check_invariants(text, segments, 50)
    assert all(word in ("1,000,000", "at", "10:30:15") for seg in segments for word in seg.split(" "))


def test_unpunctuated_run_of_words_splits_between_words():
    text = " ".join(f"word{i}" for i in range(120))
    segments = split_text(text, max_chars=60)
    check_invariants(text, segments, 60)
    assert " ".join(segments) == text  # every cut fell on a space


def test_unbroken_strings_are_hard_split_under_the_limit():
    assert split_text("a" * 1000, max_chars=250) == ["a" * 250] * 4
    # The cut leaves the tail at least min_chars long rather than a 10-char scrap...
    assert split_text("b" * 260, max_chars=250, min_chars=40) == ["b" * 220, "b" * 40]
    # ...but a word break anywhere in the window beats a hard cut.
    assert split_text("x" * 229 + " " + "y" * 25, max_chars=250, min_chars=40) == ["x" * 229, "y" * 25]
    url = "See https://example.com/" + "x" * 400 + "?q=1&r=2 for details."
    check_invariants(url, split_text(url, max_chars=100), 100)
    cjk = "我们今天去公园散步" * 100
    segments = split_text(cjk, max_chars=100)
    check_invariants(cjk, segments, 100)
    assert "".join(segments) == cjk


def test_cjk_sentences_split_at_full_stops():
    text = "今天天气很好，我们去公园散步。" * 30
    segments = split_text(text, max_chars=50)
    check_invariants(text, segments, 50)
    assert "".join(segments) == text
    assert all(seg.endswith("。") for seg in segments)


def test_hard_cut_keeps_emoji_zwj_sequences_and_combining_marks_whole():
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # 7 code points
    for seg in split_text(family * 100, max_chars=50):
        assert seg == family * (len(seg) // len(family))
    accented = "e\u0301" * 300
    segments = split_text(accented, max_chars=51)
    check_invariants(accented, segments, 51)
    assert all(seg.startswith("e") for seg in segments)


def test_rtl_and_mixed_scripts():
    text = "שלום עולם. זה משפט בעברית עם 3.5 מילים. " * 10 + "مرحبا بالعالم، كيف حالك؟ " * 10
    for max_chars in (30, 100, 250):
        check_invariants(text, split_text(text, max_chars=max_chars), max_chars)


# --- merging ---------------------------------------------------------------------------


def test_many_short_sentences_are_packed_together():
    text = "Yes. No. OK. " * 40
    segments = split_text(text)
    check_invariants(text, segments, 250)
    assert len(segments) == 3
    assert all(len(seg) >= 250 - len(" Yes.") for seg in segments[:-1])
    assert_greedy(segments, 250)


def test_tail_of_long_sentence_is_packed_with_the_next_sentence():
    # The 261-char sentence is cut so its tail keeps min_chars (40), then packed onward.
    expected = ["x" * 221, "x" * 39 + ". Fine. Good."]
    assert split_text("x" * 260 + ". Fine. Good.", max_chars=250, min_chars=40) == expected


def test_sentence_before_long_one_ends_its_segment():
    first = "This opening sentence is long enough to stand on its own."
    text = f"{first} {'a' * 149}; {'b' * 200}."
    # The long sentence's first piece would fit after `first`, but the segment then
    # would end mid-sentence instead of at the sentence boundary.
    assert split_text(text, max_chars=250, min_chars=40) == [first, "a" * 149 + ";", "b" * 200 + "."]


def test_short_sentence_before_long_one_is_merged_not_left_alone():
    text = "Yes. Ok, " + "z" * 300 + "."
    segments = split_text(text, max_chars=250, min_chars=40)
    check_invariants(text, segments, 250)
    assert segments == ["Yes. Ok,", "z" * 250, "z" * 50 + "."]


# --- properties ------------------------------------------------------------------------

WEIRD_ALPHABET = st.sampled_from(
    list("aBz09 .!?,;:-—'\"…\n\t") + ["\u200b", "\u200d", "\u0301", "\u00a0", "\U0001f600", "\U0001f3fd"]
    + list("你好。！？，、") + list("שלום") + list("مرحبا،؟") + ["Dr.", "e.g.", "3.14", "U.S.", "... "]
)
# Real words that are not abbreviations, so pysbd splits after every sentence.
WORD = st.sampled_from(
    "the river green stone window yellow quietly morning seven bridge garden coffee station "
    "people number walked under over because remarkable conversation it we they".split()
)
SENTENCE = st.builds(
    lambda words, end: " ".join(words).capitalize() + end,
    st.lists(WORD, min_size=1, max_size=25),
    st.sampled_from([".", "!", "?"]),
)
SEPARATOR = st.sampled_from([" ", "  ", "\n", "\t", " \n\n "])


@PROPERTY_SETTINGS
@given(text=st.text(max_size=1000), max_chars=st.integers(20, 400), min_chars=st.integers(0, 100))
def test_property_arbitrary_unicode(text, max_chars, min_chars):
    check_invariants(text, split_text(text, max_chars=max_chars, min_chars=min_chars), max_chars, min_chars)


@PROPERTY_SETTINGS
@given(
    text=st.lists(WEIRD_ALPHABET, max_size=600).map("".join),
    max_chars=st.integers(20, 400),
    min_chars=st.integers(0, 100),
)
def test_property_punctuation_emoji_and_mixed_scripts(text, max_chars, min_chars):
    check_invariants(text, split_text(text, max_chars=max_chars, min_chars=min_chars), max_chars, min_chars)


@PROPERTY_SETTINGS
@given(
    sentences=st.lists(SENTENCE, min_size=1, max_size=30),
    separators=st.lists(SEPARATOR, min_size=30, max_size=30),
    max_chars=st.integers(20, 400),
)
def test_property_sentence_lists_rejoin_exactly(sentences, separators, max_chars):
    text = "".join(s + sep for s, sep in zip(sentences, separators))
    segments = split_text(text, max_chars=max_chars)
    check_invariants(text, segments, max_chars)
    # Words are shorter than max_chars, so every cut falls on a space.
    assert " ".join(segments) == " ".join(text.split())
    if all(len(s) <= max_chars for s in sentences):
        # Every sentence fits: segments end at sentence ends and are packed greedily.
        assert all(seg[-1] in ".!?" for seg in segments)
        assert_greedy(segments, max_chars)


def test_serve_text_does_not_import_torch():
    code = "import sys, serve.text; sys.exit('torch' in sys.modules)"
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@PROPERTY_SETTINGS
@given(
    text=st.one_of(st.text(max_size=400), st.lists(SENTENCE, min_size=1, max_size=8).map(" ".join)),
    max_chars=st.integers(20, 400),
    min_chars=st.integers(0, 100),
)
def test_property_text_within_max_chars_is_one_segment_as_the_full_split_gives(text, max_chars, min_chars):
    """The shortcut for text that fits one segment (no sentence detection: most requests) gives
    what the full algorithm gives."""
    text = normalize_whitespace(text)[:max_chars]
    norm = normalize_whitespace(text)
    if not norm:
        assert split_text(text) == []
        return
    full = _segments(norm, max_chars, min(min_chars, max_chars // 2), pysbd.Segmenter(language="en", clean=False))
    assert split_text(text, max_chars=max_chars, min_chars=min_chars) == full == [norm]
