"""The text-in WebSocket through the real server, in-process and through Ray Serve's proxy, with
a real WebSocket client (`websockets`): text one character at a time, commit, pause-flush,
clear, cancel mid-audio, hostile clients (malformed, unknown, oversized, binary, a bad key,
text over the bound, a client that stops reading, one that vanishes): each an in-band error
or a clean close with a code, no engine row left held, nothing internal in any message."""

from __future__ import annotations

import base64
import json
import socket
import time

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import assert_no_leak
from tests.local_server import local_server
from tests.served import served_by

MAX_FRAMES = 6  # per piece: the tiny model never ends a text by itself
ENGINE = {"model": "csm-tiny", "device": "cpu", "max_num_seqs": 4, "max_frames_cap": MAX_FRAMES}
SETTINGS = {"ws_flush_after_s": 0.4, "ws_max_message_bytes": 4096, "ws_max_text_chars": 3000,
            "ws_max_send_buffer_bytes": 65536, "ws_idle_timeout_s": 20.0, "api_keys": []}
KEYED = {**SETTINGS, "api_keys": ["sk-socket"]}


@pytest.fixture(scope="module", params=["local", pytest.param("ray", marks=pytest.mark.slow)])
def served(request, tmp_path_factory):
    """(base url, streams held now: a callable) in-process and behind Ray Serve."""
    with served_by(request, str(tmp_path_factory.mktemp("voices")), ENGINE, KEYED) as served:
        yield served


def _open(url: str, key: str | None = "sk-socket", subprotocols=("csm-serve",), **kw):
    protocols = [*subprotocols, *([f"bearer.{key}"] if key else [])]
    return connect(url.replace("http", "ws", 1) + "/v1/audio/speech/stream", subprotocols=protocols or None,
                   open_timeout=30, **kw)


def _send(ws, type_: str, **fields) -> None:
    ws.send(json.dumps({"type": type_, **fields}))


def _until(ws, type_: str, timeout_s: float = 60) -> tuple[dict, list[dict], bytes]:
    """Events up to the first of `type_` (returned first), every event before it, and the audio."""
    events, audio, deadline = [], bytearray(), time.monotonic() + timeout_s
    while True:
        message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(message, bytes):
            audio += message
            continue
        assert_no_leak(message)
        event = json.loads(message)
        if event["type"] == "response.audio.delta":
            audio += base64.b64decode(event["delta"])
            continue
        if event["type"] == type_:
            return event, events, bytes(audio)
        events.append(event)


def _held_streams_drop_to_zero(streams, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while streams() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert streams() == 0  # no engine row left held


def _hello(ws, **session) -> None:
    assert json.loads(ws.recv(timeout=10))["type"] == "session.created"
    _send(ws, "session.update", session={"seed": 5, "temperature": 0, **session})
    assert json.loads(ws.recv(timeout=10))["type"] == "session.updated"


TEXT = ("Here is the first sentence of a streamed reply. A second sentence follows it, "
        "with a clause. And then the end")


def test_text_one_character_at_a_time_is_spoken_piece_by_piece(served):
    url, streams = served
    with _open(url) as ws:
        _hello(ws)
        for ch in TEXT:
            _send(ws, "input_text_buffer.append", text=ch)
        _send(ws, "input_text_buffer.commit")
        done, events, audio = _until(ws, "response.done")
    segments = [e for e in events if e["type"] == "response.segment.done"]
    assert [s["text"] for s in segments] == ["Here is the first sentence of a streamed reply.",
                                             "A second sentence follows it, with a clause.", "And then the end"]
    frame_s = 1920 / 24_000
    assert [(s["start_s"], s["end_s"]) for s in segments] == [
        pytest.approx((i * MAX_FRAMES * frame_s, (i + 1) * MAX_FRAMES * frame_s)) for i in range(3)]
    assert len(audio) == 3 * MAX_FRAMES * 1920 * 2  # pcm, int16
    usage = done["response"]["usage"]
    assert done["response"]["status"] == "completed" and usage["output_tokens"] == 3 * MAX_FRAMES
    assert usage["input_tokens"] == sum(len(s["text"]) for s in segments)
    _held_streams_drop_to_zero(streams)


def test_socket_audio_equals_the_http_long_text_path(served):
    """Same text, seed and greedy sampling: one POST (its segments) and a token stream whose
    pieces are the same segments give the same audio (within int16 rounding)."""
    url, _ = served
    sentence = "This sentence is long enough that two of them never share a piece of the long text path" \
               " which packs at most two hundred and fifty characters into one piece."
    text = " ".join([sentence] * 3)
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm", "seed": 5, "temperature": 0}
    http = httpx.post(url + "/v1/audio/speech", json=body, headers={"Authorization": "Bearer sk-socket"}, timeout=120)
    assert http.status_code == 200
    with _open(url) as ws:
        _hello(ws)
        for i in range(0, len(text), 7):  # LLM-sized deltas
            _send(ws, "input_text_buffer.append", text=text[i:i + 7])
        _send(ws, "input_text_buffer.commit")
        _, _, audio = _until(ws, "response.done")
    a, b = np.frombuffer(http.content, np.int16).astype(int), np.frombuffer(audio, np.int16).astype(int)
    assert a.shape == b.shape == (3 * MAX_FRAMES * 1920,) and np.abs(a - b).max() <= 1


def test_a_pause_in_the_text_speaks_what_came(served):
    url, _ = served
    with _open(url) as ws:
        _hello(ws)
        _send(ws, "input_text_buffer.append", text="no sentence end here")
        segment, _, audio = _until(ws, "response.segment.done", timeout_s=30)  # after ws_flush_after_s
        assert segment["text"] == "no sentence end here" and audio
        _send(ws, "input_text_buffer.commit")
        done, _, _ = _until(ws, "response.done")
        assert done["response"]["status"] == "completed"


def test_clear_drops_unspoken_text_and_cancel_stops_the_audio(served):
    url, streams = served
    with _open(url) as ws:
        _hello(ws, max_audio_seconds=60)
        _send(ws, "input_text_buffer.append", text="Unfinished and never said")
        _send(ws, "input_text_buffer.clear")
        cleared, _, _ = _until(ws, "input_text_buffer.cleared")
        assert cleared["num_chars"] == len("Unfinished and never said")
        _send(ws, "input_text_buffer.append", text="Speak this. " * 40)  # 40 pieces: seconds of audio
        _until(ws, "response.segment.done")
        _send(ws, "response.cancel")
        done, events, _ = _until(ws, "response.done")
        assert done["response"]["status"] == "cancelled"
        assert sum(e["type"] == "response.segment.done" for e in events) < 39
        _held_streams_drop_to_zero(streams)  # the row is free while the socket stays open
        _send(ws, "input_text_buffer.append", text="Still serving.")
        _send(ws, "input_text_buffer.commit")
        assert _until(ws, "response.done")[0]["response"]["status"] == "completed"


def test_a_response_at_its_audio_cap_ends_and_more_text_starts_the_next(served):
    url, _ = served
    cap_s = 2 * MAX_FRAMES * 1920 / 24_000  # two pieces' worth
    with _open(url) as ws:
        _hello(ws, max_audio_seconds=cap_s)
        for sentence in ("One. ", "Two. ", "Three. ", "Four. "):  # four pieces (sent together, they would be one)
            _send(ws, "input_text_buffer.append", text=sentence)
        first, events, audio = _until(ws, "response.done")
        assert first["response"]["status"] == "completed" and len(audio) == round(cap_s * 24_000) * 2
        assert [e["text"] for e in events if e["type"] == "response.segment.done"] == ["One.", "Two."]
        _send(ws, "session.update", session={"max_audio_seconds": 60})  # the ended response no longer blocks it
        assert _until(ws, "session.updated")[0]["session"]["max_audio_seconds"] == 60
        _send(ws, "input_text_buffer.append", text="Five.")
        _send(ws, "input_text_buffer.commit")
        second, events, _ = _until(ws, "response.done")
        assert second["response"]["id"] != first["response"]["id"] and second["response"]["status"] == "completed"
        assert [e["text"] for e in events if e["type"] == "response.segment.done"] == ["Five."]


def test_cancel_stops_the_speaking_response_and_the_one_waiting_behind_it(served):
    url, streams = served
    with _open(url) as ws:
        _hello(ws, max_audio_seconds=60)
        for _ in range(40):  # 40 pieces (one append each): seconds of work
            _send(ws, "input_text_buffer.append", text="The first reply. ")
        _send(ws, "input_text_buffer.commit")  # the first response takes no more text...
        _send(ws, "input_text_buffer.append", text="The second reply waits its turn. ")  # ...so this is the next
        _until(ws, "response.segment.done")
        _send(ws, "response.cancel")
        done = {}  # by response id (the two may end in either order)
        for _ in range(2):
            event = _until(ws, "response.done")[0]["response"]
            done[event["id"]] = event
        speaking, waiting = (done[key] for key in sorted(done))
        assert speaking["status"] == waiting["status"] == "cancelled"
        assert speaking["usage"]["output_tokens"] > 0 and waiting["usage"]["output_tokens"] == 0
        with pytest.raises(TimeoutError):  # nothing more: the waiting one never started
            ws.recv(timeout=1.5)
        _held_streams_drop_to_zero(streams)


@pytest.mark.parametrize("message, code", [
    ("{not json", "invalid_json"),
    (json.dumps({"type": "input_audio_buffer.append", "audio": ""}), "unknown_event"),
    (json.dumps({"type": "input_text_buffer.append", "text": 5}), "invalid_value"),
    (json.dumps({"type": "session.update", "session": {"speed": 99}}), "invalid_value"),
    (json.dumps({"type": "session.update", "session": {"conversation": "conv_1"}}), "unsupported"),
    (json.dumps({"type": "input_text_buffer.append", "text": "y" * 5000}), "message_too_large"),
])
def test_bad_events_get_an_in_band_error_and_the_socket_goes_on(served, message, code):
    url, _ = served
    with _open(url) as ws:
        _hello(ws)
        ws.send(message)
        error, _, _ = _until(ws, "error")
        assert error["error"]["code"] == code and error["error"]["message"]
        if code == "message_too_large":  # over ws_max_message_bytes: the socket closes, 1009
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd.code == 1009
            return
        _send(ws, "input_text_buffer.append", text="Fine.")
        _send(ws, "input_text_buffer.commit")
        assert _until(ws, "response.done")[0]["response"]["status"] == "completed"


def test_a_session_update_is_typed_and_names_the_field_it_refuses(served):
    """`session.update` is read as a typed partial of the session: an unknown field or a value
    of the wrong type is refused as the event is read, a value out of bounds on the config it
    would make; each error names its field, and the session stays as it was."""
    url, _ = served
    with _open(url) as ws:
        _hello(ws)
        for session, param in (({"sped": 1.5}, "session.sped"), ({"seed": "abc"}, "session.seed"),
                               ({"speed": 99}, "session.speed"), ({"temperature": None}, "session.temperature")):
            _send(ws, "session.update", session=session)
            error = _until(ws, "error")[0]["error"]
            assert (error["param"], error["code"]) == (param, "invalid_value"), error
        _send(ws, "session.update", session={"speed": 1.5})
        updated = _until(ws, "session.updated")[0]["session"]
        assert (updated["seed"], updated["temperature"], updated["speed"]) == (5, 0, 1.5)
    from serve.speech_socket.events import SessionConfig, SessionUpdate

    patch = SessionUpdate.model_json_schema()  # what a client's generator sees: every field, typed
    fields = patch["$defs"]["SessionPatch"]["properties"]
    assert set(fields) == set(SessionConfig.model_fields) and fields["speed"]["anyOf"][0]["type"] == "number"


def test_text_over_the_bound_and_binary_frames_are_refused(served):
    url, _ = served
    with _open(url) as ws:
        _hello(ws)
        for _ in range(2):
            _send(ws, "input_text_buffer.append", text="z" * 1600)
        assert _until(ws, "error")[0]["error"]["code"] == "text_too_long"
        ws.send(b"\x00\x01")
        assert _until(ws, "error")[0]["error"]["code"] == "invalid_message"
        _send(ws, "response.cancel")


def test_a_bad_key_is_refused_with_a_close_code(served):
    url, _ = served
    with _open(url, key="wrong") as ws:
        error = json.loads(ws.recv(timeout=10))
        assert error["error"]["code"] == "invalid_api_key"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1008
    with _open(url, key=None, additional_headers={"Authorization": "Bearer sk-socket"}) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "session.created"


def test_a_client_that_stops_reading_is_closed_and_its_row_freed(tmp_path):
    """Pieces of up to 400 frames (32 s) at a quarter speed: megabytes of audio, more than the
    kernel's buffers hold, for a client whose window is 4 KiB and who never reads."""
    from models import EngineConfig

    engine = EngineConfig(**{**ENGINE, "max_frames_cap": 400})
    with local_server(str(tmp_path), engine, **SETTINGS) as (url, replica):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window from the start
        sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        with _open(url, key=None, sock=sock, max_queue=1) as ws:
            _hello(ws, max_audio_seconds=600, response_format="wav", speed=0.25)
            _send(ws, "input_text_buffer.append", text="Read me. " * 300)
            time.sleep(1)
            assert replica.stats().num_streams == 1
            _held_streams_drop_to_zero(lambda: replica.stats().num_streams, timeout_s=120)
            with pytest.raises(ConnectionClosed) as closed:  # what was buffered, then the close: 1008
                while True:
                    ws.recv(timeout=30)
            assert closed.value.rcvd.code == 1008
        assert httpx.get(url + "/v2/health/ready", timeout=10).status_code == 200


def test_an_idle_socket_is_closed_and_a_response_waiting_for_text_freed(tmp_path):
    from models import EngineConfig

    with local_server(str(tmp_path), EngineConfig(**ENGINE), **{**SETTINGS, "ws_idle_timeout_s": 1.5}) as (url, replica):
        with _open(url, key=None) as ws:
            _hello(ws)
            _send(ws, "input_text_buffer.append", text="Spoken, then nothing more comes.")
            _until(ws, "response.segment.done")
            assert replica.stats().num_streams == 1  # the response waits for more text, holding its row
            error, _, _ = _until(ws, "error", timeout_s=10)
            assert error["error"]["code"] == "idle_timeout"
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=10)
            assert closed.value.rcvd.code == 1000
        _held_streams_drop_to_zero(lambda: replica.stats().num_streams, timeout_s=5)


def test_a_client_that_vanishes_frees_its_row(served):
    url, streams = served
    with _open(url) as ws:
        _hello(ws, max_audio_seconds=600)
        _send(ws, "input_text_buffer.append", text="Talk. " * 300)  # 300 pieces: far longer than the wait below
        _until(ws, "response.segment.done")
        ws.socket.close()  # no close frame: the TCP connection just ends
        _held_streams_drop_to_zero(streams, timeout_s=5)
    assert httpx.get(url + "/v2/health/ready", timeout=10).status_code == 200


def _omni(ws, until: str = "session.done", timeout_s: float = 60) -> tuple[list[dict], list[bytes]]:
    events, frames, deadline = [], [], time.monotonic() + timeout_s
    while True:
        message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(message, bytes):
            frames.append(message)
            continue
        assert_no_leak(message)
        events.append(json.loads(message))
        if events[-1]["type"] == until:
            return events, frames


def test_a_vllm_omni_client_works_unchanged(served):
    """vLLM-Omni's flow: session.config (sticky), input.text, input.done (a flush; the socket
    stays), session.close; units framed by audio.start / audio.done; raw PCM frames with
    stream_audio, else one file per unit."""
    url, _ = served
    auth = {"Authorization": "Bearer sk-socket"}
    with _open(url, key=None, subprotocols=(), additional_headers=auth) as ws:
        config = {"type": "session.config", "voice": "alloy", "response_format": "pcm", "stream_audio": True,
                  "split_granularity": "sentence", "seed": 1, "task_type": "CustomVoice", "language": "Auto"}
        ws.send(json.dumps(config))
        for word in ["First", "sentence", "here.", "Second", "one"]:
            ws.send(json.dumps({"type": "input.text", "text": word + " "}))
        ws.send(json.dumps({"type": "input.done"}))
        events, frames = _omni(ws)
        kinds = [e["type"] for e in events]
        assert kinds == ["audio.start", "audio.done", "audio.start", "audio.done", "session.done"]
        assert [e["sentence_text"] for e in events if e["type"] == "audio.start"] == ["First sentence here.", "Second one"]
        assert events[0]["sample_rate"] == 24_000 and events[0]["channels"] == 1
        assert sum(e["total_bytes"] for e in events if e["type"] == "audio.done") == sum(map(len, frames))
        assert events[-1] == {"type": "session.done", "utterance_index": 0, "total_sentences": 2}
        ws.send(json.dumps({**config, "stream_audio": False, "response_format": "wav", "split_granularity": "none"}))
        ws.send(json.dumps({"type": "input.text", "text": "A whole utterance. In one file."}))
        ws.send(json.dumps({"type": "input.done"}))
        events, frames = _omni(ws)
        assert [e["type"] for e in events] == ["audio.start", "audio.done", "session.done"]
        assert events[0]["sentence_text"] == "A whole utterance. In one file." and events[0]["utterance_index"] == 1
        assert len(frames) == 1 and frames[0][:4] == b"RIFF" and events[1]["total_bytes"] == len(frames[0])
        ws.send(json.dumps({"type": "input.text", "text": "Pending text."}))
        ws.send(json.dumps(config))  # sticky config: refused while an utterance has text
        assert _omni(ws, until="error")[0][-1]["message"].startswith("session.config cannot be applied")
        ws.send(json.dumps({"type": "bogus"}))
        assert _omni(ws, until="error")[0][-1]["message"] == "Unknown message type: bogus"
        ws.send(json.dumps({"type": "session.close"}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd.code == 1000
    with _open(url, key=None, subprotocols=(), additional_headers=auth) as ws:  # anything before the config is fatal
        ws.send(json.dumps({"type": "input.text", "text": "hi"}))
        assert _omni(ws, until="error")[0][-1]["message"] == "Expected session.config, got: input.text"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)


def test_the_published_event_schema_is_current():
    from pathlib import Path

    from serve.speech_socket.events import schemas

    published = Path(__file__).parents[2] / "docs" / "speech-stream.schema.json"
    assert json.loads(published.read_text()) == schemas(), "run: python -m serve.speech_socket.events > " + published.name
