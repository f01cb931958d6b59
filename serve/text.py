"""Split long speech input into sentence-aligned segments for the TTS model.

``POST /v1/audio/speech`` accepts up to 4096 characters, far more than CSM speaks
well in one generation. :func:`split_text` cuts the input into segments of at most
``max_chars`` characters; each segment is later generated with the previous one as
context and the audio is streamed back to back.

Sentence boundaries come from pysbd (rule-based Sentence Boundary Disambiguation), so
decimals ("3.14", "$2.50"), abbreviations ("Dr.", "e.g.", "U.S."), initials, ellipses
and quoted speech do not cause splits. pysbd is only asked *where* sentences end: every
segment is a slice of the whitespace-normalised input, so nothing pysbd does to the
text (it is destructive on some inputs) can drop, add or reorder characters.

Guarantees, for any input string:

* segments are non-empty, have no leading/trailing whitespace and are <= ``max_chars``;
* walking the normalised input, the segments appear in order, back to back, separated
  by either one space or nothing (nothing only where a cut had to fall inside a
  whitespace-free run, e.g. CJK text or a long URL);
* sentences are packed greedily: a segment is closed only when the next sentence does
  not fit, or when the next unit is the first piece of an over-long sentence (so the
  segment ends at a sentence boundary rather than mid-sentence);
* no segment shorter than ``min_chars`` has a neighbour it would still fit with.

This module is pure Python and never imports torch.
"""

from __future__ import annotations

import logging
import unicodedata
from typing import NamedTuple

import pysbd

__all__ = ["normalize_whitespace", "split_text"]

logger = logging.getLogger(__name__)

Span = tuple[int, int]  # [start, end) offsets into the normalised text


class _Unit(NamedTuple):
    """A sentence, or a piece of one longer than max_chars, as offsets into the text."""

    start: int
    end: int
    ends_sentence: bool  # False for every piece of a split sentence but the last


# Weaker boundaries used inside a sentence longer than max_chars, strongest first.
# Tier 0 covers CJK sentence terminators in case pysbd's rules did not split there.
_WIDE_PUNCT: dict[str, int] = {
    "。": 0, "！": 0, "？": 0, "．": 0, "｡": 0, "؟": 0, "۔": 0, "।": 0,
    "；": 1, "：": 2, "，": 3, "、": 3, "،": 3,
}  # fmt: skip
_ASCII_PUNCT: dict[str, int] = {";": 1, ":": 2, ",": 3}  # only when followed by a space
_DASHES = frozenset("—–")
_DASH_TIER = 4
_SPACE_TIER = 5
_N_TIERS = 6
_ZWSP = "\u200b"
_ZWJ = "\u200d"
# Symbols pysbd 0.3 uses internally as placeholders; in the input they make it drop or
# rewrite text ("orange☝︎A new album" segments to []). Masked before segmenting.
_PYSBD_MARKERS = "∯∮ȸȹ☉☈☇☄♨☝✂⌬⎋ᓰᓱᓳᓴᓷᓸƪ♟♝☏"
_PYSBD_MASK = str.maketrans(_PYSBD_MARKERS, "#" * len(_PYSBD_MARKERS))


def normalize_whitespace(text: str) -> str:
    """Collapse every run of Unicode whitespace to one space and strip the ends."""
    return " ".join(text.split())


def split_text(text: str, max_chars: int = 250, min_chars: int = 40, *, language: str = "en") -> list[str]:
    """Split ``text`` into sentence-aligned segments of at most ``max_chars`` characters.

    Whitespace is normalised first (runs collapsed, ends stripped); the text is
    otherwise kept as is. Consecutive sentences are packed greedily into segments of at
    most ``max_chars``. A sentence longer than ``max_chars`` is split at the best weaker
    boundary inside the limit (``;`` ``:`` ``,``, a dash, then a space), and as a last
    resort by a hard cut that avoids separating combining marks and emoji joiners.
    A segment shorter than ``min_chars`` is merged with a neighbour when they fit
    together, and long-sentence cuts avoid leaving pieces that short; ``min_chars`` is
    clamped to ``max_chars // 2``.

    Args:
        text: Input text, any Unicode.
        max_chars: Hard upper bound on a segment's length, in code points (>= 1).
        min_chars: Segments shorter than this merge with a neighbour when they fit (>= 0).
        language: pysbd language code (ISO 639-1) for the sentence rules.

    Returns:
        The segments in order; ``[]`` for empty or whitespace-only input.

    Raises:
        ValueError: ``max_chars < 1``, ``min_chars < 0`` or an unsupported language.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
    if min_chars < 0:
        raise ValueError(f"min_chars must be >= 0, got {min_chars}")
    segmenter = pysbd.Segmenter(language=language, clean=False)  # raises on unknown language
    norm = normalize_whitespace(text)
    if not norm:
        return []
    if len(norm) <= max_chars:  # one segment whatever the sentences: no sentence detection needed
        return [norm]
    return _segments(norm, max_chars, min(min_chars, max_chars // 2), segmenter)


def _segments(norm: str, max_chars: int, min_chars: int, segmenter: pysbd.Segmenter) -> list[str]:
    """split_text on normalised, non-empty text (min_chars already clamped)."""
    units: list[_Unit] = []
    for span in _sentence_spans(norm, segmenter):
        units.extend(_split_long(norm, span, max_chars, min_chars))
    segments = _merge_short(_pack(units, max_chars), max_chars, min_chars)
    return [norm[start:end] for start, end in segments]


def _sentence_spans(text: str, segmenter: pysbd.Segmenter) -> list[Span]:
    """Stripped, non-empty sentence spans that cover ``text`` (pysbd boundaries)."""
    bounds = [0, *_sentence_ends(text, segmenter), len(text)]
    spans = (_strip_span(text, a, b) for a, b in zip(bounds, bounds[1:]))
    return [(a, b) for a, b in spans if a < b]


def _sentence_ends(text: str, segmenter: pysbd.Segmenter) -> list[int]:
    """End offsets in ``text`` of the sentences pysbd finds, increasing.

    pysbd returns sentence strings, not trustworthy offsets, and may alter or drop text
    on odd input. Each stripped sentence is located in ``text`` from the previous end;
    a sentence that is not found is skipped (its text joins the next sentence), so a
    misbehaving pysbd can only cost boundaries, never characters. pysbd's own marker
    symbols are masked first (one character for one, so offsets are unchanged).
    """
    text = text.translate(_PYSBD_MASK)
    try:
        sentences = segmenter.segment(text)
    except Exception:  # a heuristic must never fail a request: fall back to no boundaries
        logger.debug("pysbd failed; treating the input as one sentence", exc_info=True)
        return []
    ends: list[int] = []
    pos = 0
    for sentence in sentences:
        sentence = sentence.strip()
        found = text.find(sentence, pos) if sentence else -1
        if found >= 0:
            pos = found + len(sentence)
            if _at_word_break(text, pos):
                ends.append(pos)
    return ends


def _at_word_break(text: str, pos: int) -> bool:
    """Whether a pysbd boundary at ``pos`` is outside a token.

    pysbd splits "https://example.com/path?q=1" after the "?". A boundary between two
    ASCII non-space characters is dropped; CJK text ("你好。世界") has no spaces.
    """
    if pos >= len(text) or text[pos] == " ":
        return True
    return not (text[pos - 1].isascii() and text[pos].isascii())


def _strip_span(text: str, start: int, end: int) -> Span:
    """Shrink ``[start, end)`` so it neither starts nor ends with whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _split_long(text: str, span: Span, max_chars: int, min_chars: int) -> list[_Unit]:
    """Cut one sentence span into pieces of at most ``max_chars``."""
    start, end = span
    pieces: list[_Unit] = []
    while end - start > max_chars:
        cut = start + _best_cut(text[start:end], max_chars, min_chars)
        pieces.append(_Unit(*_strip_span(text, start, cut), ends_sentence=False))
        start = _strip_span(text, cut, end)[0]
    pieces.append(_Unit(start, end, ends_sentence=True))
    return pieces


def _best_cut(sentence: str, max_chars: int, min_chars: int) -> int:
    """Where to cut an over-long stripped sentence: ``1 <= cut <= max_chars``.

    The strongest boundary tier wins, at its latest position; first among cuts that
    leave both pieces >= ``min_chars``, then among any, then a hard cut.
    """
    n = len(sentence)
    hi = min(max_chars, n - min_chars)  # >= 1 because min_chars <= max_chars // 2 < n
    candidates = _cut_candidates(sentence, max_chars)
    for lo, up in ((min_chars, hi), (1, hi), (1, max_chars)):
        for tier in range(_N_TIERS):
            cuts = [cut for t, cut in candidates if t == tier and lo <= cut <= up]
            if cuts:
                return max(cuts)
    return _hard_cut(sentence, hi)


def _cut_candidates(sentence: str, max_chars: int) -> list[tuple[int, int]]:
    """``(tier, cut)`` pairs for the weak boundaries in the first ``max_chars + 1`` chars.

    ``sentence[:cut]`` is the piece before the boundary (trailing space excluded).
    """
    candidates: list[tuple[int, int]] = []
    window = sentence[: max_chars + 1]
    for i, ch in enumerate(window):
        nxt = sentence[i + 1 : i + 2]
        prev = sentence[i - 1 : i] if i else ""
        if ch == " " or ch == _ZWSP:
            candidates.append((_SPACE_TIER, i if ch == " " else i + 1))
        elif ch in _WIDE_PUNCT:
            candidates.append((_WIDE_PUNCT[ch], i + 1))
        elif ch in _ASCII_PUNCT and nxt == " ":  # not "3,000" or "10:30"
            candidates.append((_ASCII_PUNCT[ch], i + 1))
        elif ch in _DASHES or (ch == "-" and prev == " " and nxt == " "):
            candidates.append((_DASH_TIER, i + 1))
    return candidates


def _hard_cut(sentence: str, cut: int) -> int:
    """Back ``cut`` off so it does not split a combining sequence; ``1 <= result``."""
    safe = cut
    while safe > 1 and _joins_previous(sentence, safe):
        safe -= 1
    return safe if not _joins_previous(sentence, safe) else cut


def _joins_previous(text: str, i: int) -> bool:
    """True when a cut before ``text[i]`` would separate it from what precedes it."""
    ch = text[i]
    cp = ord(ch)
    return (
        unicodedata.category(ch) in ("Mn", "Mc", "Me")
        or ch == _ZWJ
        or text[i - 1] == _ZWJ
        or 0xFE00 <= cp <= 0xFE0F  # variation selectors
        or 0x1F3FB <= cp <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= cp <= 0xE007F  # emoji tag sequences
        or 0xE0100 <= cp <= 0xE01EF  # variation selectors supplement
    )


def _pack(units: list[_Unit], max_chars: int) -> list[Span]:
    """Greedily merge consecutive units into spans of at most ``max_chars``.

    Each unit is already <= ``max_chars``. A segment is closed when the next unit does
    not fit, or when taking it would make a segment that ends at a sentence boundary
    end mid-sentence instead (the first piece of an over-long sentence starts afresh).
    """
    packed: list[Span] = []
    start, end, at_sentence_end = units[0]
    for unit in units[1:]:
        fits = unit.end - start <= max_chars
        if fits and (unit.ends_sentence or not at_sentence_end):
            end, at_sentence_end = unit.end, unit.ends_sentence
        else:
            packed.append((start, end))
            start, end, at_sentence_end = unit
    packed.append((start, end))
    return packed


def _merge_short(segments: list[Span], max_chars: int, min_chars: int) -> list[Span]:
    """Merge each segment shorter than ``min_chars`` with a neighbour it fits with.

    After this pass no two neighbours fit together in ``max_chars`` while either of
    them is shorter than ``min_chars``.
    """
    merged: list[Span] = []
    for start, end in segments:
        if merged:
            prev_start, prev_end = merged[-1]
            short = min(end - start, prev_end - prev_start) < min_chars
            if short and end - prev_start <= max_chars:
                merged[-1] = (prev_start, end)
                continue
        merged.append((start, end))
    return merged
