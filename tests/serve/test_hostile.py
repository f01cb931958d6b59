"""Hostile input over real HTTP on loopback, in-process and through Ray Serve: schemathesis
against the app's own OpenAPI schema, Unicode edge cases for speech, malformed voice uploads.
Every answer is audio or a clean OpenAI-shaped 4xx that leaks nothing (no traceback, path,
pid, address), never a 5xx, and the server keeps serving."""

import json
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from models import EngineConfig
from serve.app import create_app
from serve.audio import decode_audio
from serve.settings import ServerSettings
from stores.voices import VoiceStore
from tests.conftest import assert_no_leak, wav_bytes
from tests.local_server import local_server

FRAME_SAMPLES = 1920
MAX_FRAMES = 8  # the tiny model never says EOS: every valid request runs to this cap (per text segment)


ENGINE = {"model": "csm-tiny", "device": "cpu", "max_num_seqs": 4, "max_frames_cap": MAX_FRAMES}


@pytest.fixture(scope="module", params=["local", pytest.param("ray", marks=pytest.mark.slow)])
def served(request, tmp_path_factory) -> tuple[str, Path]:
    """The same app in-process and behind Ray Serve (where errors cross the Ray handle)."""
    voices, conversations = tmp_path_factory.mktemp("voices"), str(tmp_path_factory.mktemp("conversations"))
    if request.param == "local":
        with local_server(str(voices), EngineConfig(**ENGINE), max_queued_requests=4,
                          conversations_dir=conversations) as (url, _):
            yield url, voices
    else:
        from tests.ray_serve import deployed

        args = {"engine": ENGINE, "server": {"voices_dir": str(voices), "conversations_dir": conversations},
                "cpus_per_engine": 1, "max_queued_requests": 4}
        with deployed(request.getfixturevalue("ray_serve"), args) as url:
            yield url, voices


@pytest.fixture(scope="module")
def server(served) -> str:
    return served[0]


@pytest.fixture(scope="module")
def voices_dir(served) -> Path:
    return served[1]


def _assert_openai_error(r: httpx.Response, *statuses: int) -> dict:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert_no_leak(r.text)
    if statuses:
        assert r.status_code in statuses, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"] and error["type"] == "invalid_request_error"
    return error


def _assert_serving(url: str) -> None:
    assert httpx.get(url + "/health", timeout=10).json() == {"status": "ok"}


# -- 1. schemathesis: every operation of the app's own OpenAPI schema --------------------------------

CHECKS = [
    not_a_server_error,  # no 5xx, whatever the input
    status_code_conformance,  # only documented statuses (errors are documented as 4XX/5XX ErrorResponse)
    content_type_conformance,  # the content type is one the operation documents (every audio format)
    response_headers_conformance,
    response_schema_conformance,  # JSON bodies (models, voices, errors) match their schemas; audio has none
    negative_data_rejection,  # schema-violating requests are refused with a 4xx, not accepted
]
_ran, _created = [], []


def _openapi() -> dict:
    """The app's own OpenAPI document (what /openapi.json serves: see the test below); the backend
    plays no part in it. Built at import because schemathesis' lazy fixture loader
    (`schemathesis.pytest.from_fixture`) breaks under pytest 9 (it sets the removed `Node._nodeid`)."""
    return create_app(None, VoiceStore(None), ServerSettings()).openapi()


schema = schemathesis.openapi.from_dict(_openapi())


def test_served_openapi_is_the_schema_under_test(server):
    assert httpx.get(server + "/openapi.json", timeout=10).json() == _openapi()


_SAMPLE = wav_bytes(1.0)
_MODELS, _VOICES = {"csm-1b", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"}, {"alloy", "echo", "nova"}


def _steer_into_synthesis(case) -> None:
    """Random strings never name a model or voice, so generated speech requests would all stop at
    404/400: point valid ones at a real model and voice (every other field stays generated, so
    input text, format, speed, seed, temperature, top_k and speaker all reach the engine and the
    encoders), with at most 2 frames of audio (the first chunk) to keep them cheap."""
    if case.meta is None or not case.meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return
    body = dict(case.body)
    if body.get("model") not in _MODELS:
        body["model"] = "tts-1"
    voice = body.get("voice")
    if isinstance(voice, dict):
        body["voice"] = {**voice, "id": "alloy"}
    elif voice not in _VOICES:
        body["voice"] = "alloy"
    body["max_audio_seconds"] = min(body.get("max_audio_seconds") or 1.0, 0.16)
    body.pop("conversation", None)  # a generated id names none (404): conversations have tests of their own
    case.body = body


def _steer_batch_into_synthesis(case) -> None:
    """The batch's model and every item's voice as for one speech request (above), at most 2
    frames each; the items' other fields stay generated (a bad one fails alone)."""
    if case.meta is None or not case.meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return
    body = dict(case.body)
    if body.get("model") is not None and body["model"] not in _MODELS:
        body["model"] = "tts-1"
    if body.get("voice") is not None:
        body["voice"] = "alloy"
    body["max_audio_seconds"] = 0.16
    items = []
    for item in body.get("items") or []:
        item = dict(item) if isinstance(item, dict) else item
        if isinstance(item, dict):
            item.pop("voice", None)
            item["max_audio_seconds"] = min(item.get("max_audio_seconds") or 0.16, 0.16)
        items.append(item)
    body["items"] = items or [{"input": "x"}]
    case.body = body


def _create_voice_with_real_audio(case, server) -> None:
    """Generated samples are never audio (and real bytes in the case would make schemathesis count
    it as negative): send the valid case's generated fields again with a real sample, so they go
    through decoding, storage and the engine (with a plain name if the generated one is refused,
    so the generated transcript, consent and speaker get there too). Audio or a clean 400."""
    if case.meta is None or not case.meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return
    fields = {k: str(case.body[k]) for k in ("name", "transcript", "consent", "speaker")
              if case.body.get(k) is not None}
    for name in (fields.get("name"), "Fuzzed voice"):
        r = httpx.post(server + "/v1/audio/voices", data={**fields, "name": name or ""}, timeout=60,
                       files={"audio_sample": ("s.wav", _SAMPLE, "audio/wav")})
        if r.status_code == 200:
            _created.append(r.json()["id"])
            assert httpx.delete(server + f"/v1/audio/voices/{r.json()['id']}", timeout=10).status_code == 200
            return
        if _assert_openai_error(r, 400)["param"] != "name":
            return


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))  # 15: ~45 s for the speech route
def test_openapi_schema_holds_under_generated_input(case, server):
    if case.operation.path == "/v1/audio/speech":
        _steer_into_synthesis(case)
    elif case.operation.path == "/v1/audio/speech/batch":
        _steer_batch_into_synthesis(case)
    response = case.call_and_validate(base_url=server, checks=CHECKS, timeout=30)
    _ran.append((case.operation.label, response.status_code))
    if response.status_code >= 400:  # a path parameter the client sent may be echoed: not a leak
        assert_no_leak(response.text, tuple(str(v) for v in (case.path_parameters or {}).values()))
    if case.operation.label == "POST /v1/audio/voices":
        _create_voice_with_real_audio(case, server)
    if case.operation.path == "/v1/audio/speech":
        _assert_serving(server)


# -- 2. Unicode edge cases through POST /v1/audio/speech ----------------------------------------------

SPEECH = {"model": "tts-1", "voice": "alloy", "response_format": "wav", "seed": 1}
UNICODE_OK = {
    "rtl": "مرحبا بالعالم. שלום עולם.",
    "mixed_direction": "Hello \u202eolleh\u202c and \u200fעברית\u200e.",
    "emoji": "Hi 👋🏽 there 🎉🎉",
    "zwj_sequence": "Family: 👨\u200d👩\u200d👧\u200d👦, flag: 🏳️\u200d🌈.",
    "combining": "Ze\u0301ro Z̸̢̧a̷̡l̶g̵o̴",
    "control_chars": "bell\x07 escape\x1b[31m red del\x7f tab\t end",
    "nul_inside": "before\x00after",
    "multibyte_4096": "語" * 4096,
    "astral_4096": "𝄞" * 4096,  # 4096 characters, 16384 UTF-8 bytes: the limit counts characters
    "long_word": "a" * 4096,
    "long_word_multibyte": "ж" * 3000,
    "emoji_only": "🎉",  # a symbol: speakable
    "punctuation_only": "...?!",
}
UNSPEAKABLE = {  # no letter, digit, punctuation or symbol: nothing to speak, a clean 400 (as whitespace is)
    "zero_width_only": "\u200b\u200b",
    "zwj_only": "\u200d\u200d\u200d",
    "bom_only": "\ufeff",
    "nul_only": "\x00",
    "controls_only": "\x00\x1b\x7f",
    "combining_only": "\u0301\u0301",
    "ideographic_space": "\u3000\u3000",  # whitespace to Python's str.strip(): rejected
    "nbsp_only": "\u00a0",
    "bidi_marks_only": "\u200f\u200e\u202e\u202c",
    "invisible_mix": " \u200b\n\u200c\t\u2060\u00ad ",
}


def _speech(url: str, **kwargs) -> httpx.Response:
    return httpx.post(url + "/v1/audio/speech", timeout=120, **kwargs)


def _assert_audio(r: httpx.Response, max_frames: int = MAX_FRAMES) -> None:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("audio/wav")
    pcm = decode_audio(r.content)
    assert len(pcm) % FRAME_SAMPLES == 0 and FRAME_SAMPLES <= len(pcm) <= max_frames * FRAME_SAMPLES


@pytest.mark.parametrize("text", UNICODE_OK.values(), ids=UNICODE_OK.keys())
def test_unicode_input_gives_audio(server, text):
    # Long input is split into many segments of MAX_FRAMES each: two segments' worth is enough.
    _assert_audio(_speech(server, json={**SPEECH, "input": text, "max_audio_seconds": 2 * MAX_FRAMES * 0.08}),
                  max_frames=2 * MAX_FRAMES)
    _assert_serving(server)


@pytest.mark.parametrize("text", UNSPEAKABLE.values(), ids=UNSPEAKABLE.keys())
def test_input_without_speakable_text_is_a_clean_400(server, text):
    error = _assert_openai_error(_speech(server, json={**SPEECH, "input": text}), 400)
    assert error["param"] == "input" and "text to speak" in error["message"], error
    _assert_serving(server)


def test_the_input_limit_counts_characters_not_bytes(server):
    for text in ("語" * 4097, "𝄞" * 4097, "a" * 4097):  # 4096 of each is accepted (above)
        error = _assert_openai_error(_speech(server, json={**SPEECH, "input": text}), 400)
        assert error["param"] == "input" and error["code"] == "string_too_long", error
    _assert_serving(server)


RAW_INPUTS = {  # the `input` value as raw JSON bytes no client library would produce: (bytes, status, param)
    "lone_high_surrogate": (b'"\\ud800"', 400, "input"),  # not a Unicode string: refused, not passed on
    "lone_low_surrogate": (b'"\\udfff"', 400, "input"),
    "surrogate_in_text": (b'"Hi \\ud83d there"', 400, "input"),
    "reversed_pair": (b'"\\ude00\\ud83d"', 400, "input"),
    "valid_escaped_pair": (b'"Hi \\ud83d\\ude00"', 200, None),
    "escaped_nul": (b'"a\\u0000b"', 200, None),
    "raw_nul_byte": (b'"a\x00b"', 400, None),  # control characters must be escaped in JSON
    "raw_control_byte": (b'"a\x1bb"', 400, None),
    "invalid_utf8": (b'"caf\xe9"', 400, None),
    "overlong_utf8": (b'"\xc0\xaf"', 400, None),
    "utf8_encoded_surrogate": (b'"\xed\xa0\x80"', 400, "input"),
}


@pytest.mark.parametrize("raw, status, param", RAW_INPUTS.values(), ids=RAW_INPUTS.keys())
def test_raw_json_edge_cases_never_break_the_server(server, raw, status, param):
    body = b'{"model": "tts-1", "voice": "alloy", "response_format": "wav", "seed": 1, "input": ' + raw + b"}"
    r = _speech(server, content=body, headers={"content-type": "application/json"})
    if status == 200:
        _assert_audio(r)
    else:
        assert _assert_openai_error(r, status)["param"] == param
    _assert_serving(server)


RAW_DOCUMENTS = {  # whole request bodies
    "nested_100k_arrays": b'{"model": "tts-1", "voice": ' + b"[" * 100_000 + b"]" * 100_000 + b', "input": "x"}',
    "nested_50k_objects": b'{"model": "tts-1", "voice": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000
                          + b', "input": "x"}',
    "5000_digit_seed": b'{"model": "tts-1", "voice": "alloy", "input": "x", "seed": 1' + b"0" * 5000 + b"}",
    "nan_speed": b'{"model": "tts-1", "voice": "alloy", "input": "x", "speed": NaN}',
    "infinite_length": b'{"model": "tts-1", "voice": "alloy", "input": "x", "max_audio_seconds": Infinity}',
    "top_level_array": b'[{"model": "tts-1", "voice": "alloy", "input": "x"}]',
    "top_level_null": b"null",
    "top_level_string": b'"x"',
    "empty": b"",
    "8_mib_input": b'{"model": "tts-1", "voice": "alloy", "input": "' + b"x" * (8 * 2**20) + b'"}',
}


@pytest.mark.parametrize("body", RAW_DOCUMENTS.values(), ids=RAW_DOCUMENTS.keys())
def test_malformed_documents_get_a_clean_400(server, body):
    _assert_openai_error(_speech(server, content=body, headers={"content-type": "application/json"}), 400)
    _assert_serving(server)


def test_sse_with_hostile_unicode_is_valid_json_events(server):
    text = "\u202e👨\u200d👩\u200d👧 \x00"
    with httpx.stream("POST", server + "/v1/audio/speech", timeout=60,
                      json={**SPEECH, "input": text, "stream_format": "sse"}) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["input_tokens"] == len(text) == 8


# -- 3. Malformed uploads to POST /v1/audio/voices ------------------------------------------------------


GOOD = wav_bytes(1.5)
FORM = {"name": "ok", "transcript": "Hello there."}

UPLOADS = {  # (httpx.post arguments, expected statuses, expected param or None)
    "json_body": ({"json": {**FORM, "audio_sample": "UklGRg=="}}, (400,), None),
    "urlencoded_only": ({"data": {**FORM, "audio_sample": "RIFF...."}}, (400,), "audio_sample"),
    "sample_as_form_field": ({"data": FORM, "files": {"audio_sample": (None, "RIFF....")}}, (400,), "audio_sample"),
    "text_file": ({"data": FORM, "files": {"audio_sample": ("a.txt", b"just some text\n" * 100, "text/plain")}},
                  (400,), "audio_sample"),
    "json_file": ({"data": FORM, "files": {"audio_sample": ("a.json", b'{"a": 1}', "application/json")}},
                  (400,), "audio_sample"),
    "truncated_header": ({"data": FORM, "files": {"audio_sample": ("s.wav", GOOD[:20], "audio/wav")}},
                         (400,), "audio_sample"),
    "header_only": ({"data": FORM, "files": {"audio_sample": ("s.wav", GOOD[:44], "audio/wav")}},
                    (400,), "audio_sample"),
    "truncated_data": ({"data": FORM, "files": {"audio_sample": ("s.wav", GOOD[:44 + 4000], "audio/wav")}},
                       (400,), "audio_sample"),  # 0.125 s of samples left: too short
    "empty_file": ({"data": FORM, "files": {"audio_sample": ("s.wav", b"", "audio/wav")}}, (400,), "audio_sample"),
    "missing_file": ({"data": FORM}, (400,), "audio_sample"),
    "missing_transcript": ({"data": {"name": "ok"}, "files": {"audio_sample": ("s.wav", GOOD, "audio/wav")}},
                           (400,), "transcript"),
    "blank_transcript": ({"data": {"name": "ok", "transcript": " \n "},
                          "files": {"audio_sample": ("s.wav", GOOD, "audio/wav")}}, (400,), "transcript"),
    "missing_name": ({"data": {"transcript": "t"}, "files": {"audio_sample": ("s.wav", GOOD, "audio/wav")}},
                     (400,), "name"),
    "speaker_not_int": ({"data": {**FORM, "speaker": "x"}, "files": {"audio_sample": ("s.wav", GOOD, "audio/wav")}},
                        (400,), "speaker"),
    "speaker_out_of_range": ({"data": {**FORM, "speaker": "1000"},
                              "files": {"audio_sample": ("s.wav", GOOD, "audio/wav")}}, (400,), "speaker"),
    "transcript_over_2000": ({"data": {**FORM, "transcript": "t" * 2001},
                              "files": {"audio_sample": ("s.wav", GOOD, "audio/wav")}}, (400,), "transcript"),
    "field_over_1_mib": ({"data": {**FORM, "transcript": "t" * 2**21},
                          "files": {"audio_sample": ("s.wav", GOOD, "audio/wav")}}, (400,), None),
    "too_many_fields": ({"data": {f"f{i}": "x" for i in range(1001)},
                         "files": {"audio_sample": ("s.wav", GOOD, "audio/wav")}}, (400,), None),
    "multipart_without_boundary": ({"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
                                   (400,), None),
    "multipart_garbage": ({"content": b"garbage" * 100, "headers": {"content-type": "multipart/form-data; boundary=b"}},
                          (400,), None),
    "wav_absurd_rate": ({"data": FORM, "files": {"audio_sample": ("s.wav", GOOD[:24] + (2**31 - 1).to_bytes(4, "little")
                                                                  + GOOD[28:], "audio/wav")}}, (400,), "audio_sample"),
    "wav_zero_rate": ({"data": FORM, "files": {"audio_sample": ("s.wav", GOOD[:24] + bytes(4) + GOOD[28:],
                                                                "audio/wav")}}, (400,), "audio_sample"),
    "wav_65535_channels": ({"data": FORM, "files": {"audio_sample": ("s.wav", GOOD[:22] + b"\xff\xff" + GOOD[24:],
                                                                     "audio/wav")}}, (400,), "audio_sample"),
    "over_10_mib": ({"data": FORM, "files": {"audio_sample": ("s.wav", GOOD + b"\0" * (10 * 2**20), "audio/wav")}},
                    (413,), "audio_sample"),
}
BAD_NAMES = {
    "dotdot_etc": "../../etc", "slash": "a/b", "dotdot": "..", "dot": ".", "urlencoded_dotdot": "%2e%2e",
    "backslash": "a\\b", "absolute": "/etc/passwd", "nul": "a\x00b", "newline": "a\nb", "crlf": "a\r\nb",
    "too_long": "a" * 65, "empty": "", "space_only": " ", "leading_dot": ".hidden", "unicode_slash": "a\u2215b",
    "rtl_override": "a\u202eb", "emoji": "👋",
}


@pytest.mark.parametrize("request_kwargs, statuses, param", UPLOADS.values(), ids=UPLOADS.keys())
def test_bad_uploads_get_clean_openai_errors(server, request_kwargs, statuses, param):
    r = httpx.post(server + "/v1/audio/voices", timeout=60, **request_kwargs)
    error = _assert_openai_error(r, *statuses)
    if param:
        assert error["param"] == param, error
    _assert_serving(server)


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_path_like_voice_names_are_refused(server, name):
    r = httpx.post(server + "/v1/audio/voices", data={**FORM, "name": name}, timeout=60,
                   files={"audio_sample": ("s.wav", GOOD, "audio/wav")})
    assert _assert_openai_error(r, 400)["param"] == "name"
    _assert_serving(server)


def test_hostile_filenames_and_ids_do_not_escape_the_voices_dir(server, voices_dir):
    r = httpx.post(server + "/v1/audio/voices", data={**FORM, "name": "Fine name"}, timeout=60,
                   files={"audio_sample": ("../../../../tmp/evil\x00\n.wav", GOOD, "audio/wav")})
    assert r.status_code == 200, r.text
    voice_id = r.json()["id"]
    assert sorted(p.name for p in (voices_dir / voice_id).iterdir()) == ["sample.flac", "voice.json"]
    for bad in ("..", "%2e%2e", "..%2f..%2fetc", "voice_..%2f..%2fx", voice_id + "%00", voice_id + "%0A", "%ff",
                voice_id[:-1] + "*", "alloy"):
        r = httpx.delete(server + "/v1/audio/voices/" + bad, timeout=10)
        assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}, (bad, r.text)
    assert (voices_dir / voice_id / "voice.json").exists()
    assert httpx.delete(server + f"/v1/audio/voices/{voice_id}", timeout=10).status_code == 200
    assert not (voices_dir / voice_id).exists()
    _assert_serving(server)


def test_schemathesis_ran_every_operation(server):
    """Runs after the schemathesis test (file order): every operation got generated cases."""
    if not _ran:
        pytest.skip("the schemathesis test was not selected")
    operations = {label for label, _ in _ran}
    assert {"POST /v1/audio/speech", "POST /v1/audio/voices", "DELETE /v1/audio/voices/{voice_id}",
            "GET /v1/models/{model_id}"} <= operations, operations
    assert ("POST /v1/audio/speech", 200) in _ran and _created  # generated requests really reached the engine


