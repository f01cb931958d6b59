"""Conversations over real HTTP on loopback, in-process and through Ray Serve: the REST
resource (create, show, add a recorded turn, delete), speech requests that speak its next
turn through the official openai client (`extra_body`), Triton's sequences through
tritonclient (HTTP and gRPC: sequence_id names the conversation, sequence_start creates it,
sequence_end deletes it), and hostile input: unknown, deleted
and path-like ids (404), a turn while another is spoken (409), garbage audio, a turn too long
for the model's context, the size and count bounds (400 naming the bound) - each a clean
OpenAI error, with nothing stored."""

import threading
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from models import EngineConfig
from serve.v2.protocol import sequence_conversation
from tests.conftest import assert_no_leak, wav_bytes
from tests.local_server import local_server

# max_seq_len 512: a turn of this test's words may be about 30 s long (a reply's room left)
ENGINE = {"model": "csm-tiny", "device": "cpu", "max_num_seqs": 4, "max_frames_cap": 64, "max_seq_len": 512}
BOUNDS = {"max_conversations": 6, "max_conversation_bytes": 65536}
EXTRA = {"seed": 5, "max_audio_seconds": 0.48}


@pytest.fixture(scope="module", params=["local", pytest.param("ray", marks=pytest.mark.slow)])
def served(request, tmp_path_factory) -> tuple[str, Path, str]:
    """(base URL, the conversations' folder, the gRPC address)."""
    voices, folder = tmp_path_factory.mktemp("voices"), tmp_path_factory.mktemp("conversations")
    if request.param == "local":
        with local_server(str(voices), EngineConfig(**ENGINE), conversations_dir=str(folder), **BOUNDS) as (url, rep):
            yield url, folder, f"127.0.0.1:{rep.grpc_port}"
    else:
        from tests.ray_serve import deployed

        runtime = request.getfixturevalue("ray_serve")
        server = {"voices_dir": str(voices), "conversations_dir": str(folder), **BOUNDS}
        with deployed(runtime, {"engine": ENGINE, "server": server, "cpus_per_engine": 1}) as url:
            yield url, folder, f"127.0.0.1:{runtime.grpc_port}"


@pytest.fixture
def url(served) -> str:
    return served[0]


@pytest.fixture
def conversation(url):
    """A new conversation, deleted after the test (the count bound is small)."""
    created = httpx.post(url + "/v1/audio/conversations", timeout=30)
    assert created.status_code == 200, created.text
    yield created.json()
    httpx.delete(url + f"/v1/audio/conversations/{created.json()['id']}", timeout=30)


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert_no_leak(r.text)
    return r.json()["error"]


def _add_turn(url: str, conversation_id: str, audio: bytes, transcript: str = "Tell me a story.",
              speaker: int = 1) -> httpx.Response:
    return httpx.post(url + f"/v1/audio/conversations/{conversation_id}/turns", timeout=60,
                      data={"transcript": transcript, "speaker": str(speaker)},
                      files={"audio": ("turn.wav", audio, "audio/wav")})


def _get(url: str, conversation_id: str) -> httpx.Response:
    return httpx.get(url + f"/v1/audio/conversations/{conversation_id}", timeout=30)


def test_a_dialogue_through_the_openai_client(url, conversation):
    assert conversation["object"] == "audio.conversation" and conversation["turns"] == []
    assert conversation["expires_at"] > conversation["created_at"] and conversation["voice"] is None
    added = _add_turn(url, conversation["id"], wav_bytes(1.0))
    assert added.status_code == 200, added.text
    assert added.json()["turns"] == [{"speaker": 1, "text": "Tell me a story.", "source": "audio"}]
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    for text in ("Once upon a time.", "The end."):
        audio = client.audio.speech.create(model="tts-1", voice="alloy", input=text, response_format="pcm",
                                           extra_body={"conversation": conversation["id"], **EXTRA}).read()
        assert len(audio) == 6 * 1920 * 2
    shown = _get(url, conversation["id"]).json()
    assert [(t["speaker"], t["text"], t["source"]) for t in shown["turns"]] == [
        (1, "Tell me a story.", "audio"), (0, "Once upon a time.", "generated"), (0, "The end.", "generated")]
    assert shown["bytes"] > 0
    deleted = httpx.delete(url + f"/v1/audio/conversations/{conversation['id']}", timeout=30)
    assert deleted.json() == {"id": conversation["id"], "object": "audio.conversation.deleted", "deleted": True}
    assert _error(_get(url, conversation["id"]), 404)["code"] == "conversation_not_found"
    with pytest.raises(openai.NotFoundError) as gone:
        client.audio.speech.create(model="tts-1", voice="alloy", input="Anyone there?", response_format="pcm",
                                   extra_body={"conversation": conversation["id"], **EXTRA})
    assert gone.value.body["param"] == "conversation" and gone.value.body["code"] == "conversation_not_found"


def test_a_conversation_with_a_voice_speaks_in_it(url):
    created = httpx.post(url + "/v1/audio/conversations", json={"voice": "nova"}, timeout=30)
    assert created.status_code == 200 and created.json()["voice"] == "nova"
    httpx.delete(url + f"/v1/audio/conversations/{created.json()['id']}", timeout=30)
    bad = httpx.post(url + "/v1/audio/conversations", json={"voice": "nobody"}, timeout=30)
    assert _error(bad, 400)["code"] == "voice_not_found"


def test_a_second_turn_while_one_is_spoken_gets_409(url, conversation):
    body = {"model": "tts-1", "voice": "alloy", "input": "A long first answer.", "response_format": "pcm",
            "conversation": conversation["id"], "seed": 1, "max_audio_seconds": 4.0}
    started, received = threading.Event(), []

    def first():
        with httpx.stream("POST", url + "/v1/audio/speech", json=body, timeout=120) as r:
            for chunk in r.iter_bytes():
                started.set()
                received.append(len(chunk))

    speaker = threading.Thread(target=first)
    speaker.start()
    assert started.wait(60)
    second = httpx.post(url + "/v1/audio/speech", json={**body, "input": "Me too."}, timeout=60)
    speaker.join(120)
    error = _error(second, 409)
    assert (error["type"], error["param"], error["code"]) == ("conflict_error", "conversation", "turn_in_progress")
    assert sum(received) == 50 * 1920 * 2  # the first turn ran to its end, and was kept
    assert [t["text"] for t in _get(url, conversation["id"]).json()["turns"]] == ["A long first answer."]


@pytest.mark.parametrize("conversation_id", ["conv_0000000000000000", "../../etc", "conv_..%2F..%2Fx", "voice_abc",
                                             "conv_" + "a" * 200])
def test_unknown_and_path_like_ids_are_not_found(url, served, conversation_id):
    before = sorted(p.name for p in served[1].iterdir())
    for r in (_get(url, conversation_id), httpx.delete(url + f"/v1/audio/conversations/{conversation_id}", timeout=30),
              _add_turn(url, conversation_id, wav_bytes(0.5))):
        if r.status_code != 404:  # a path that leaves the route is the router's 404 or 405
            assert r.status_code in (404, 405), r.text
            continue
        assert _error(r, 404)["code"] in ("conversation_not_found", None)
    speech = httpx.post(url + "/v1/audio/speech", timeout=30, json={
        "model": "tts-1", "voice": "alloy", "input": "Hi.", "conversation": conversation_id, **EXTRA})
    assert _error(speech, 400 if len(conversation_id) > 128 else 404)["param"] == "conversation"  # 128: the field's limit
    assert sorted(p.name for p in served[1].iterdir()) == before  # nothing stored


def test_bad_turns_are_refused_and_nothing_is_stored(url, conversation):
    conversation_id = conversation["id"]
    garbage = _add_turn(url, conversation_id, b"RIFF\x00\x00not audio at all" * 10)
    assert (_error(garbage, 400)["param"], garbage.json()["error"]["code"]) == ("audio", "invalid_audio")
    too_long = _add_turn(url, conversation_id, wav_bytes(40.0))  # 500 frames: no room in 512 positions
    assert (_error(too_long, 400)["param"], too_long.json()["error"]["code"]) == ("audio", "turn_too_long")
    no_words = _add_turn(url, conversation_id, wav_bytes(0.5), transcript="   ")
    assert _error(no_words, 400)["param"] == "transcript"
    bad_speaker = _add_turn(url, conversation_id, wav_bytes(0.5), speaker=-3)
    assert _error(bad_speaker, 400)["param"] == "speaker"
    assert _get(url, conversation_id).json()["turns"] == []


def test_the_size_bound_is_a_400_that_names_it(url, conversation):
    import io

    import soundfile

    noise = io.BytesIO()  # noise barely compresses: 3 s of it is over the 64 KiB bound as FLAC
    soundfile.write(noise, np.random.default_rng(0).uniform(-0.5, 0.5, 72_000).astype(np.float32), 24_000,
                    format="WAV", subtype="PCM_16")
    over = _add_turn(url, conversation["id"], noise.getvalue())
    assert _error(over, 400)["code"] == "conversation_too_large"
    assert _get(url, conversation["id"]).json()["turns"] == []


def test_the_count_bound_is_a_400_that_names_it(url, conversation):
    made = []
    try:
        for _ in range(BOUNDS["max_conversations"]):
            r = httpx.post(url + "/v1/audio/conversations", timeout=30)
            if r.status_code != 200:
                break
            made.append(r.json()["id"])
        assert _error(r, 400)["code"] == "conversation_limit"
    finally:
        for conversation_id in made:
            httpx.delete(url + f"/v1/audio/conversations/{conversation_id}", timeout=30)
    again = httpx.post(url + "/v1/audio/conversations", timeout=30)  # room again
    assert again.status_code == 200
    httpx.delete(url + f"/v1/audio/conversations/{again.json()['id']}", timeout=30)


def _infer(client, module, text: str, **sequence) -> np.ndarray:
    tensor = module.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
    return client.infer("csm-1b", [tensor], parameters={"seed": 5, "max_audio_seconds": 0.48},
                        **sequence).as_numpy("audio")


def test_triton_sequences_are_conversations(served):
    url, _, grpc_address = served
    http = httpclient.InferenceServerClient(url.split("//")[1])
    grpc_ = grpcclient.InferenceServerClient(grpc_address)
    with pytest.raises(InferenceServerException) as never_started:  # Triton's answer without the START flag
        _infer(http, httpclient, "Where were we?", sequence_id=4242)
    assert "must specify the START flag" in never_started.value.message()
    conversation = sequence_conversation(4242)
    assert len(_infer(http, httpclient, "Hello.", sequence_id=4242, sequence_start=True)) == 6 * 1920
    assert len(_infer(grpc_, grpcclient, "Hello again.", sequence_id=4242)) == 6 * 1920  # the same conversation
    turns = _get(url, conversation).json()["turns"]
    assert [(t["text"], t["source"]) for t in turns] == [("Hello.", "generated"), ("Hello again.", "generated")]
    _infer(grpc_, grpcclient, "Goodbye.", sequence_id=4242, sequence_end=True)
    assert _get(url, conversation).status_code == 404  # ended: deleted, its turn spoken first
    _infer(grpc_, grpcclient, "Named.", sequence_id="session-a", sequence_start=True)
    _infer(grpc_, grpcclient, "Started over.", sequence_id="session-a", sequence_start=True)  # START again: anew
    named = sequence_conversation("session-a")
    assert [t["text"] for t in _get(url, named).json()["turns"]] == ["Started over."]
    _infer(http, httpclient, "Bye.", sequence_id="session-a", sequence_end=True)
    assert _get(url, named).status_code == 404
    no_id = httpx.post(url + "/v2/models/csm-1b/infer", timeout=30, json={
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Hi."]}],
        "parameters": {"sequence_start": True}})
    assert no_id.status_code == 400 and "need a sequence_id" in no_id.json()["error"]
