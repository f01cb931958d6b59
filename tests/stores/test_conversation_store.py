"""The conversation store (stores/conversations.py): turns kept in order on a shared
folder, each change whole or not at all, its bounds (count, bytes, idle expiry) as client
errors naming them, one turn at a time per conversation, nothing readable after a delete."""

import numpy as np
import pytest

from stores.conversations import ConversationError, ConversationNotFound, ConversationStore, TurnInProgress


def test_turns_kept_in_order_and_read_back(tmp_path):
    store = ConversationStore(tmp_path)
    conv = store.create(voice="alloy")
    pcm = np.sin(np.linspace(0, 100, 24_000)).astype(np.float32) * 0.3
    store.add_audio_turn(conv.id, 1, "Hello, who is there?", pcm)
    codes = np.arange(3 * 32).reshape(3, 32) % 2048
    store.add_generated_turn(conv.id, 0, "It is me.", codes)
    other = ConversationStore(tmp_path)  # another process on the same volume
    got = other.get(conv.id)
    assert [(t.speaker, t.text) for t in got.turns] == [(1, "Hello, who is there?"), (0, "It is me.")]
    assert got.voice == "alloy" and got.num_bytes > 0
    np.testing.assert_allclose(other.load_audio(conv.id, got.turns[0]), pcm, atol=1e-4)  # FLAC, 16-bit
    np.testing.assert_array_equal(other.load_codes(conv.id, got.turns[1]), codes)


def test_bounds_are_client_errors_that_name_them(tmp_path):
    now = [1000.0]
    store = ConversationStore(tmp_path, max_count=2, max_bytes=4000, idle_expiry_s=60, clock=lambda: now[0])
    a, _ = store.create(), store.create()
    with pytest.raises(ConversationError) as full:
        store.create()
    assert full.value.code == "conversation_limit"
    store.add_generated_turn(a.id, 0, "Small.", np.zeros((10, 32)))  # 768 bytes of codes
    with pytest.raises(ConversationError) as big:
        store.add_generated_turn(a.id, 0, "Too big.", np.zeros((100, 32)))
    assert big.value.code == "conversation_too_large" and len(store.get(a.id).turns) == 1  # nothing stored
    now[0] += 61  # both idle past the expiry: gone, and their places free
    with pytest.raises(ConversationNotFound):
        store.get(a.id)
    store.create()
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("bad", ["../etc", "conv_../../x", "voice_0123456789abcdef", "", "conv_0123456789abcdeg"])
def test_path_like_and_unknown_ids_are_not_found(tmp_path, bad):
    store = ConversationStore(tmp_path)
    with pytest.raises(ConversationNotFound):
        store.get(bad)
    with pytest.raises(ConversationNotFound):
        store.delete(bad)


def test_one_turn_at_a_time_and_nothing_after_delete(tmp_path):
    store = ConversationStore(tmp_path, stale_lock_s=900)
    conv = store.create()
    with store.turn(conv.id), pytest.raises(TurnInProgress), store.turn(conv.id):
        pass
    with store.turn(conv.id):  # released: the next turn may start
        pass
    store.delete(conv.id)
    with pytest.raises(ConversationNotFound):
        store.get(conv.id)
    with pytest.raises(ConversationNotFound):
        store.add_generated_turn(conv.id, 0, "Late.", np.zeros((1, 32)))
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    store = ConversationStore(tmp_path, stale_lock_s=0.0)
    conv = store.create()
    (tmp_path / conv.id / ".turn.lock").touch()  # its holder died
    with store.turn(conv.id) as held:
        assert held.id == conv.id


def test_disabled_without_a_folder():
    with pytest.raises(ConversationError):
        ConversationStore(None).create()
