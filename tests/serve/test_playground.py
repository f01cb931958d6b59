"""The playground at `/` in real headless Chromium (Debian's chromium + chromium-driver, driven
by selenium) against a real csm-serve (uvicorn, in-process engine, csm-tiny) on loopback."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from models import EngineConfig
from serve.routes.playground import CSP
from stores.voices import OPENAI_VOICES
from tests.conftest import wav_bytes
from tests.local_server import local_server

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"),
]
ENGINE = EngineConfig(model="csm-tiny", device="cpu", max_num_seqs=4, max_frames_cap=50)  # 4 s per segment
SHOTS = Path(os.environ.get("PLAYGROUND_SCREENSHOTS", "out/playground"))  # look at them yourself


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with local_server(str(tmp_path_factory.mktemp("voices")), engine=ENGINE,
                      conversations_dir=str(tmp_path_factory.mktemp("conversations"))) as running:
        yield running[0]


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while not (value := driver.execute_script(script)):
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.05)
    return value


def open_page(driver, url: str) -> None:
    driver.get(url + "/")
    wait_for(driver, "return window.csmPlayground && window.csmPlayground.ready")


def fnv1a(data: bytes) -> int:
    """FNV-1a (32-bit), as the playground computes it over the bytes of the samples it plays."""
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def speak(driver, text: str, **fields) -> dict:
    box = driver.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)
    for name, value in fields.items():
        field = driver.find_element(By.ID, name)
        field.clear()
        field.send_keys(str(value))
    runs = driver.execute_script("return window.csmPlayground.runs")
    driver.find_element(By.ID, "speak").click()
    wait_for(driver, f"return window.csmPlayground.runs > {runs}")
    return wait_for(driver, "const r = window.csmPlayground.last; return r.status !== 'running' && r")


def severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_page_loads_lists_voices_and_loads_nothing_from_elsewhere(server, browser):
    response = httpx.get(server + "/", timeout=10)
    assert response.status_code == 200 and response.headers["content-security-policy"] == CSP
    open_page(browser, server)
    names = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#voice option")]
    assert set(OPENAI_VOICES) <= set(names)
    assert browser.find_element(By.ID, "model").text == "model csm-1b"
    assert "4,096" in browser.find_element(By.CSS_SELECTOR, ".right").text
    assert browser.find_element(By.ID, "key-section").get_attribute("hidden") is not None  # no keys here
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(server + "/") for r in resources), resources
    assert severe(browser) == []


def test_speak_plays_pcm_through_web_audio_as_it_arrives(server, browser):
    open_page(browser, server)
    run = speak(browser, "Hello from the browser.", seed=11)
    assert run["status"] == "done", run
    assert run["samples"] == 50 * 1920 and run["chunks"] >= 3
    # Web Audio had samples while the response was still open, long before it ended
    assert run["webAudioSamplesAtFirstChunk"] > 0 and run["firstAudioMs"] < 0.5 * run["elapsedMs"]
    assert run["audioContextState"] == "running"
    # the very samples the API gives any client for the same request
    body = {"model": "csm-1b", "input": "Hello from the browser.", "voice": "alloy", "response_format": "pcm",
            "speed": 1, "temperature": 0.9, "seed": 11}
    pcm = np.frombuffer(httpx.post(server + "/v1/audio/speech", json=body, timeout=60).content, "<i2")
    assert run["pcmHash"] == fnv1a(pcm.tobytes())  # every sample, in order (a sum would miss a swap)
    assert browser.find_element(By.ID, "ttfa").text.endswith(" ms")
    assert float(browser.find_element(By.ID, "rtf").text) > 0
    assert browser.find_element(By.ID, "used-seed").text == "11"
    Select(browser.find_element(By.ID, "format")).select_by_visible_text("mp3")
    browser.find_element(By.ID, "download").click()
    download = wait_for(browser, "return window.csmPlayground.lastDownload")
    assert download["format"] == "mp3" and download["type"] == "audio/mpeg" and download["bytes"] > 1000
    assert severe(browser) == []


def test_type_and_hear_speaks_each_sentence_as_it_is_typed(server, browser):
    """Keystrokes go to the text-in WebSocket one by one; the first sentence is heard while the
    second is still being typed; Done ends the reply."""
    open_page(browser, server)
    box = browser.find_element(By.ID, "live-text")
    box.click()  # focus opens the socket
    wait_for(browser, "return window.csmPlayground.live.ready")
    box.send_keys("The first sentence is typed. ")
    wait_for(browser, "return window.csmPlayground.live.samples > 0")  # heard before the rest is typed
    box.send_keys("Then the second")
    browser.find_element(By.ID, "live-done").click()
    live = wait_for(browser, "const l = window.csmPlayground.live; return l.responses.length && l")
    assert live["responses"] == ["completed"] and live["opened"] == 1 and live["errors"] == []
    assert live["deltas"] == len("The first sentence is typed. Then the second")  # one event per keystroke
    assert live["segments"] == ["The first sentence is typed.", "Then the second"]
    assert live["samples"] == 2 * 50 * 1920  # both sentences, every sample handed to Web Audio
    items = browser.find_elements(By.CSS_SELECTOR, "#live-segments li")
    assert [i.text.split(": ", 1)[1] for i in items] == live["segments"] and items[1].text.startswith("4.00–8.00 s")
    assert severe(browser) == []


def test_an_api_error_is_shown_as_the_api_says_it(server, browser):
    open_page(browser, server)
    run = speak(browser, "")
    assert run["status"] == "error"
    expected = httpx.post(server + "/v1/audio/speech", timeout=10, json={
        "model": "csm-1b", "input": "", "voice": "alloy", "response_format": "pcm"}).json()["error"]["message"]
    shown = browser.find_element(By.ID, "error")
    assert shown.is_displayed() and shown.text == expected


def test_upload_a_voice_and_speak_with_it(server, browser, tmp_path):
    sample = tmp_path / "me.wav"
    sample.write_bytes(wav_bytes(2.0))
    open_page(browser, server)
    browser.find_element(By.ID, "voice-name").send_keys("browser-voice")
    browser.find_element(By.ID, "voice-transcript").send_keys("A quiet tone for testing.")
    browser.find_element(By.ID, "voice-file").send_keys(str(sample))
    browser.find_element(By.ID, "upload").click()
    voice_id = wait_for(browser, "const v = document.getElementById('voice').value; return v.startsWith('voice_') && v")
    listed = httpx.get(server + "/v1/audio/voices", timeout=10).json()["data"]
    assert {"id": voice_id, "name": "browser-voice"}.items() <= next(v for v in listed if v["id"] == voice_id).items()
    run = speak(browser, "Now in my own voice.", seed=3)
    assert run["status"] == "done" and run["samples"] == 50 * 1920


def test_record_a_voice_from_the_microphone(server, browser):
    """Chromium's fake microphone (a tone), recorded by MediaRecorder (WebM/Opus), uploaded as
    the sample: the server decodes it with PyAV like any other file."""
    open_page(browser, server)
    browser.find_element(By.ID, "voice-name").send_keys("mic-voice")
    browser.find_element(By.ID, "voice-transcript").send_keys("Testing the microphone.")
    browser.find_element(By.ID, "record").click()
    wait_for(browser, "return document.getElementById('recording').textContent === 'recording…'")
    time.sleep(2.0)
    browser.find_element(By.ID, "record").click()
    wait_for(browser, "return document.getElementById('recording').textContent.startsWith('recorded')")
    browser.find_element(By.ID, "upload").click()
    voice_id = wait_for(browser, "const v = document.getElementById('voice').value; "
                                 "return v.startsWith('voice_') && document.getElementById('status').textContent"
                                 ".includes('mic-voice') && v")
    listed = {v["id"]: v["name"] for v in httpx.get(server + "/v1/audio/voices", timeout=10).json()["data"]}
    assert listed[voice_id] == "mic-voice"
    run = speak(browser, "Said in the recorded voice.", seed=5)  # the recorded voice is selected: it speaks
    assert run["status"] == "done" and run["samples"] > 0, run
    body = {"model": "csm-1b", "input": "Said in the recorded voice.", "voice": voice_id, "response_format": "pcm",
            "speed": 1, "temperature": 0.9, "seed": 5}
    assert run["pcmHash"] == fnv1a(httpx.post(server + "/v1/audio/speech", json=body, timeout=60).content)


def test_a_conversation_with_a_recorded_turn_and_a_reply(server, browser):
    """Start a conversation, add your turn from the (fake) microphone with its words, then Speak:
    the reply is spoken in the conversation and listed as its turn; ending it deletes it."""
    open_page(browser, server)
    severe(browser)  # read: what earlier tests logged (one shows an API error on purpose) is theirs
    browser.find_element(By.ID, "conv-start").click()
    conversation = wait_for(browser, "return window.csmPlayground.conversation.id")
    browser.find_element(By.ID, "conv-transcript").send_keys("Can you hear me?")
    browser.find_element(By.ID, "conv-record").click()
    wait_for(browser, "return document.getElementById('conv-record').textContent.startsWith('Stop')")
    time.sleep(1.5)
    browser.find_element(By.ID, "conv-record").click()
    wait_for(browser, "return window.csmPlayground.conversation.added === 1")
    run = speak(browser, "Yes, loud and clear.", seed=4)
    assert run["status"] == "done" and run["samples"] > 0, run
    wait_for(browser, "return window.csmPlayground.conversation.turns.length === 2")
    listed = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#conv-turns li")]
    assert listed == ["You: Can you hear me?", "Model: Yes, loud and clear."]
    turns = httpx.get(server + f"/v1/audio/conversations/{conversation}", timeout=10).json()["turns"]
    assert [(t["source"], t["text"]) for t in turns] == [("audio", "Can you hear me?"),
                                                         ("generated", "Yes, loud and clear.")]
    assert not browser.find_element(By.ID, "download").is_enabled()  # a reply is its turn, not spoken again
    browser.find_element(By.ID, "conv-end").click()
    wait_for(browser, "return window.csmPlayground.conversation.id === null")
    deadline = time.monotonic() + 10
    while httpx.get(server + f"/v1/audio/conversations/{conversation}", timeout=10).status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert not severe(browser)


def test_usable_at_desktop_and_phone_widths(server, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    open_page(browser, server)
    for name, (width, height) in {"desktop": (1280, 900), "phone": (390, 844)}.items():
        browser.set_window_size(width, height)
        browser.save_screenshot(str(SHOTS / f"{name}.png"))
        inner, scroll = browser.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")
        assert scroll <= inner, f"{name}: the page scrolls sideways ({scroll} > {inner})"
        for control in ("text", "voice", "speak", "voice-file", "upload"):
            rect = browser.find_element(By.ID, control).rect
            assert rect["width"] > 0 and rect["x"] >= 0 and rect["x"] + rect["width"] <= inner, (name, control, rect)
    browser.set_window_size(1280, 900)


def test_api_key_field_when_keys_are_enabled(tmp_path, browser):
    with local_server(str(tmp_path), engine=ENGINE, api_keys=["sesame-key"]) as (url, _):
        open_page(browser, url)
        assert browser.find_element(By.ID, "key-section").is_displayed()
        assert "API key" in browser.find_element(By.ID, "error").text
        browser.find_element(By.ID, "api-key").send_keys("sesame-key")
        browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
        wait_for(browser, "return document.querySelectorAll('#voice option').length >= 13")
        assert not browser.find_element(By.ID, "key-section").is_displayed()
        run = speak(browser, "With a key.", seed=1)
        assert run["status"] == "done" and run["samples"] == 50 * 1920
