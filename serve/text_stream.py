"""Cut text that streams in (an LLM's reply, token by token) into speakable pieces as soon
as each is certain: the text-in WebSocket's splitter, built on serve/text.py's rules.

A piece is ready when
* a sentence is complete: pysbd ends it before more text (so "Dr. Smith", "e.g. this" and
  "3.14" do not cut), or the pending text ends with a sentence end that pysbd would end
  before any next sentence (tried with a probe continuation) and is not a number's dot
  ("$2." may still become "$2.50");
* a sentence runs long: past `clause_min_words` words, it is cut after the first clause
  mark (, ; : or a dash) that follows them; past `max_chars`, at serve/text.py's best cut;
* the caller flushes (a commit, or a pause in the text: the WebSocket's setting).
Complete sentences that arrive together are packed as split_text packs them (so a text sent
whole is cut exactly as POST /v1/audio/speech cuts it).

Guarantee: the pieces, then `pending`, joined with single spaces, are the whitespace-
normalised text appended (no character dropped, added or reordered); every piece is
non-empty and at most `max_chars` long. Pure Python, no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pysbd

from .text import _sentence_ends, normalize_whitespace, split_text

_SENTENCE_END = re.compile(r"""[.!?…。！？][\"')\]”’»]*$""")
_NUMBER_DOT = re.compile(r"\d\.$")
_CLAUSE_MARK = re.compile(r"[,;:，；、—–](?=\s)")
_PROBE = " The"


@dataclass
class StreamSplitter:
    max_chars: int = 250
    clause_min_words: int = 12
    _buffer: str = ""
    _segmenter: pysbd.Segmenter = field(default_factory=lambda: pysbd.Segmenter(language="en", clean=False))

    @property
    def pending(self) -> str:
        """Text appended but not yet in a piece (whitespace-normalised)."""
        return normalize_whitespace(self._buffer)

    def append(self, delta: str) -> list[str]:
        """Add `delta`; returns the pieces it made ready (often none)."""
        self._buffer += delta
        text = normalize_whitespace(self._buffer)
        if not text:
            return []
        ready = self._complete_end(text)
        pieces = split_text(text[:ready], self.max_chars) if ready else []
        rest = text[ready:].lstrip()
        clause = self._clause_end(rest)
        if clause:
            pieces.append(rest[:clause])
            rest = rest[clause:].lstrip()
        if len(rest) > self.max_chars:
            *cut, rest = split_text(rest, self.max_chars)
            pieces += cut
        self._buffer = rest + (" " if rest and self._buffer[-1].isspace() else "")
        return pieces

    def flush(self) -> list[str]:
        """Everything pending, as pieces (none if nothing is)."""
        pieces, self._buffer = split_text(self._buffer, self.max_chars), ""
        return pieces

    def clear(self) -> str:
        """Drop the pending text; returns it."""
        dropped, self._buffer = self.pending, ""
        return dropped

    def _complete_end(self, text: str) -> int:
        """Offset in `text` where its complete sentences end (0: none complete)."""
        ends = [e for e in _sentence_ends(text, self._segmenter) if 0 < e < len(text)]
        last = ends[-1] if ends else 0
        if self._ends_sentence(text[last:].strip()):
            return len(text)
        return last

    def _ends_sentence(self, tail: str) -> bool:
        if not tail or not _SENTENCE_END.search(tail) or _NUMBER_DOT.search(tail):
            return False
        probe = tail + _PROBE
        return any(0 < e < len(probe) for e in _sentence_ends(probe, self._segmenter))

    def _clause_end(self, rest: str) -> int:
        """Where a long unfinished sentence may be cut after a clause mark (0: not yet)."""
        if len(rest.split()) <= self.clause_min_words:
            return 0
        for words, match in enumerate(re.finditer(r"\S+", rest), start=1):
            if words >= self.clause_min_words and _CLAUSE_MARK.match(rest, match.end() - 1):
                return match.end()
        return 0
