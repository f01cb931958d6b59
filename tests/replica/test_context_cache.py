"""The context cache: keyed by id + version, least recently used evicted to stay within its
byte budget, an entry larger than the budget not kept, hits / misses / evictions counted."""

from models.core.prompt import Prefix
from replica.context_cache import ContextCache, ContextKey


def _prefix(num_bytes: int) -> Prefix:
    return Prefix(context=(), length=1, kv=None, num_bytes=num_bytes)


def _key(id_: str, version: str = "v1", kind: str = "voice") -> ContextKey:
    return ContextKey(kind, id_, version)


def test_hits_and_misses_by_exact_version():
    cache = ContextCache(max_bytes=100)
    a = _prefix(10)
    assert cache.get(_key("a")) is None  # miss
    assert cache.put(_key("a"), a)
    assert cache.get(_key("a")) is a  # hit
    assert cache.get(_key("a", "v2")) is None  # another version of the same id: a miss, never stale
    cache.put(_key("a", "v2"), _prefix(20))  # replaces v1
    stats = cache.stats()
    assert stats.num_entries == 1 and stats.num_bytes == 20
    assert dict(stats.num_hits) == {"voice": 1, "conversation": 0}
    assert dict(stats.num_misses) == {"voice": 2, "conversation": 0}
    assert cache.get(_key("a")) is None


def test_least_recently_used_evicted_to_stay_within_bytes():
    cache = ContextCache(max_bytes=100)
    for name in "abc":
        cache.put(_key(name), _prefix(30))
    cache.get(_key("a"))  # b is now the least recently used
    cache.put(_key("d"), _prefix(30))
    assert [k.id for k in cache.keys("voice")] == ["c", "a", "d"]
    stats = cache.stats()
    assert stats.num_bytes == 90 and stats.num_evictions == 1
    cache.put(_key("e"), _prefix(70))  # two more evictions make room: 30 + 70 fit
    assert [k.id for k in cache.keys("voice")] == ["d", "e"] and cache.stats().num_evictions == 3


def test_an_entry_larger_than_the_budget_is_not_kept():
    cache = ContextCache(max_bytes=50)
    cache.put(_key("small"), _prefix(10))
    assert not cache.put(_key("huge"), _prefix(51))
    assert [k.id for k in cache.keys("voice")] == ["small"] and cache.stats().num_evictions == 0


def test_forget_drops_every_version_and_kinds_are_apart():
    changes = []
    cache = ContextCache(max_bytes=100, on_change=changes.append)
    cache.put(_key("x"), _prefix(10))
    cache.put(_key("x", kind="conversation"), _prefix(10))
    assert cache.forget("voice", "x") and not cache.forget("voice", "x")
    assert [k.kind for k in cache.keys("conversation")] == ["conversation"] and cache.keys("voice") == []
    assert changes[-1].num_bytes == 10 and len(changes) == 4  # every change reported (metrics)
