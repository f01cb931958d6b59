"""The one context cache of a replica: computed prefixes (context segments + their backbone
KV) of voices and, next, conversations, kept for the requests that start with them.

Keyed by what a context is and which version of it (`ContextKey`: kind, id, the store
record's version), so a record replaced under the same id is never served stale. Bounded by
the bytes of KV it holds (on a card that memory competes with decode slots): the least
recently used entries are evicted to make room, and an entry larger than the whole budget is
not kept (its request still uses it). Requests already holding an evicted prefix keep their
reference. Event-loop state only: use from one asyncio loop. No torch here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from contract.stats import ContextCacheStats
from models.core.prompt import Prefix
from models.params import Segment

ContextKind = Literal["voice", "conversation"]
KINDS: tuple[ContextKind, ...] = ("voice", "conversation")


@dataclass(frozen=True)
class ContextKey:
    kind: ContextKind
    id: str
    version: str


class ContextCache:
    def __init__(self, max_bytes: int, on_change: Callable[[ContextCacheStats], None] | None = None) -> None:
        """`on_change(stats)` runs after every lookup and change (metrics)."""
        self.max_bytes = max_bytes
        self._on_change = on_change
        self._entries: OrderedDict[tuple[str, str], tuple[ContextKey, Prefix]] = OrderedDict()  # LRU first
        self._num_bytes = 0
        self._hits = dict.fromkeys(KINDS, 0)
        self._misses = dict.fromkeys(KINDS, 0)
        self._evictions = 0
        self._positions = {(kind, how): 0 for kind in KINDS for how in ("reused", "computed")}

    def get(self, key: ContextKey, covering: tuple[Segment, ...] | None = None) -> Prefix | None:
        """The prefix cached for exactly this key (marked most recently used), or None; with
        `covering`, only one that context starts with (a conversation's context grows)."""
        entry = self._entries.get((key.kind, key.id))
        found = entry is not None and entry[0] == key and (covering is None or entry[1].covers(covering))
        if found:
            self._entries.move_to_end((key.kind, key.id))
        counts = self._hits if found else self._misses
        counts[key.kind] += 1
        self._changed()
        return entry[1] if found else None

    def put(self, key: ContextKey, prefix: Prefix) -> bool:
        """Keep a prefix (replacing any other version of the same id), evicting the least
        recently used entries to stay within max_bytes. False when it alone exceeds them."""
        self._drop((key.kind, key.id))
        if prefix.num_bytes > self.max_bytes:
            self._changed()
            return False
        while self._entries and self._num_bytes + prefix.num_bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self._evictions += 1
        self._entries[key.kind, key.id] = (key, prefix)
        self._num_bytes += prefix.num_bytes
        self._changed()
        return True

    def forget(self, kind: ContextKind, id_: str) -> bool:
        """Drop every version of a context; False when none was cached."""
        dropped = self._drop((kind, id_))
        self._changed()
        return dropped

    def count(self, kind: ContextKind, reused: int, computed: int) -> None:
        """A request's context: `reused` positions came from a cached prefix, `computed` were
        prefilled for it."""
        self._positions[kind, "reused"] += reused
        self._positions[kind, "computed"] += computed
        self._changed()

    def keys(self, kind: ContextKind) -> list[ContextKey]:
        """The cached keys of one kind, least recently used first."""
        return [key for key, _ in self._entries.values() if key.kind == kind]

    def stats(self) -> ContextCacheStats:
        return ContextCacheStats(len(self._entries), self._num_bytes, self.max_bytes, tuple(self._hits.items()),
                                 tuple(self._misses.items()), self._evictions,
                                 tuple((kind, how, n) for (kind, how), n in self._positions.items()))

    def _drop(self, slot: tuple[str, str]) -> bool:
        entry = self._entries.pop(slot, None)
        if entry is not None:
            self._num_bytes -= entry[1].num_bytes
        return entry is not None

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.stats())
