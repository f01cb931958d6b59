// csm-serve playground: speaks through the same OpenAI-compatible API any client uses.
// "Speak" asks for `pcm` (24 kHz, 16-bit, mono) and hands every chunk to Web Audio as it
// arrives; `window.csmPlayground` records what happened (for people and for the browser tests).
import { startConversation } from "./conversation.js";
import { startLive } from "./live.js";
import { microphone } from "./microphone.js";

const SAMPLE_RATE = 24000;
const MAX_CHARS = 4096;
const $ = (id) => document.getElementById(id);
const state = { model: null, body: null, abort: null, recorded: null, context: null };
const hook = (window.csmPlayground = { ready: false, runs: 0, last: null, lastDownload: null, errors: [] });

// --- the API: bearer key, OpenAI-shaped errors ------------------------------------------------

function headers(extra = {}) {
  const key = sessionStorage.getItem("csm-api-key");
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function apiError(response) {
  let message = `HTTP ${response.status} ${response.statusText}`;
  try { message = (await response.json()).error?.message ?? message; } catch { /* not JSON */ }
  if (response.status === 401) $("key-section").hidden = false;
  return new ApiError(response.status, message);
}

async function api(path, init = {}) {
  const response = await fetch(path, { ...init, headers: headers(init.headers) });
  if (!response.ok) throw await apiError(response);
  return response;
}

function showError(message) {
  hook.errors.push(message);
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearError() { $("error").hidden = true; $("error").textContent = ""; }

function status(text) { $("status").textContent = text; }

// --- model and voices ----------------------------------------------------------------------------

async function loadModelAndVoices(selectId) {
  const models = await (await api("/v1/models")).json();
  state.model = models.data[0].id;
  $("model").textContent = `model ${state.model}`;
  const voices = (await (await api("/v1/audio/voices")).json()).data;
  const select = $("voice");
  const previous = selectId ?? select.value;
  select.replaceChildren();
  for (const [label, group] of [["Custom", voices.filter((v) => v.id !== v.name)],
                                ["OpenAI names", voices.filter((v) => v.id === v.name)]]) {
    if (!group.length) continue;
    const optgroup = document.createElement("optgroup");
    optgroup.label = label;
    for (const v of group) optgroup.append(new Option(v.id === v.name ? v.name : `${v.name} (${v.id})`, v.id));
    select.append(optgroup);
  }
  if (previous && voices.some((v) => v.id === previous)) select.value = previous;
  else if (voices.some((v) => v.id === "alloy")) select.value = "alloy";
}

// --- speaking: PCM bytes -> Web Audio, as they arrive --------------------------------------------

class PcmPlayer {
  constructor(context) {
    this.context = context;
    this.at = 0;
    this.odd = null; // a byte of a sample split across two network reads
    this.sources = [];
  }

  /** Schedule these bytes right after what is queued; returns their int16 samples. */
  push(bytes) {
    if (this.odd !== null) {
      const joined = new Uint8Array(bytes.length + 1);
      joined[0] = this.odd;
      joined.set(bytes, 1);
      bytes = joined;
    }
    this.odd = bytes.length % 2 ? bytes[bytes.length - 1] : null;
    const n = bytes.length >> 1;
    if (!n) return new Int16Array(0);
    const view = new DataView(bytes.buffer, bytes.byteOffset, 2 * n);
    const ints = new Int16Array(n);
    const buffer = this.context.createBuffer(1, n, SAMPLE_RATE);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < n; i++) {
      ints[i] = view.getInt16(2 * i, true);
      channel[i] = ints[i] / 32768;
    }
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    this.at = Math.max(this.at, this.context.currentTime + 0.05); // after an underrun, resume 50 ms ahead
    source.start(this.at);
    this.at += n / SAMPLE_RATE;
    this.sources.push(source);
    return ints;
  }

  stop() { for (const s of this.sources) s.stop(); this.sources = []; }
}

function speechBody(format) {
  const num = (id) => ($(id).value === "" ? null : Number($(id).value));
  const body = {
    model: state.model, input: $("text").value, voice: $("voice").value, response_format: format,
    speed: num("speed") ?? 1, temperature: num("temperature") ?? 0.9, seed: num("seed") ?? Math.floor(Math.random() * 2 ** 31),
  };
  if (num("max-seconds") !== null) body.max_audio_seconds = num("max-seconds");
  if (state.conversation?.id()) body.conversation = state.conversation.id();
  return body;
}

function showStats(run) {
  $("ttfa").textContent = run.firstAudioMs === null ? "–" : `${Math.round(run.firstAudioMs)} ms`;
  const audioS = run.samples / SAMPLE_RATE;
  $("audio-s").textContent = `${audioS.toFixed(2)} s`;
  $("rtf").textContent = audioS ? `${(run.elapsedMs / 1000 / audioS).toFixed(3)}` : "–";
  $("used-seed").textContent = String(run.seed);
}

const FNV_OFFSET = 0x811c9dc5;

/** FNV-1a (32-bit) continued over int16 samples as little-endian bytes: a fingerprint of the
 * exact sample sequence handed to Web Audio (order and every value), for the browser tests. */
function fnv1a(hash, ints) {
  for (const v of ints) {
    hash = Math.imul(hash ^ (v & 0xff), 0x01000193) >>> 0;
    hash = Math.imul(hash ^ ((v >> 8) & 0xff), 0x01000193) >>> 0;
  }
  return hash;
}

async function speak() {
  clearError();
  if (state.abort) state.abort.abort();
  state.context ??= new AudioContext({ sampleRate: SAMPLE_RATE });
  await state.context.resume();
  const body = speechBody("pcm");
  const run = { seed: body.seed, status: "running", chunks: 0, samples: 0, pcmHash: FNV_OFFSET, firstAudioMs: null,
                elapsedMs: 0, webAudioSamplesAtFirstChunk: 0, message: null };
  hook.runs += 1;
  hook.last = run;
  const abort = (state.abort = new AbortController());
  const player = new PcmPlayer(state.context);
  $("speak").disabled = true; $("stop").disabled = false; $("download").disabled = true;
  status("speaking…");
  const t0 = performance.now();
  try {
    const response = await api("/v1/audio/speech", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal: abort.signal,
    });
    const reader = response.body.getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const ints = player.push(value);
      if (!ints.length) continue;
      if (run.firstAudioMs === null) {
        run.firstAudioMs = performance.now() - t0;
        run.webAudioSamplesAtFirstChunk = ints.length; // handed to Web Audio while the response is still open
      }
      run.chunks += 1;
      run.samples += ints.length;
      run.pcmHash = fnv1a(run.pcmHash, ints);
      run.elapsedMs = performance.now() - t0;
      showStats(run);
    }
    run.elapsedMs = performance.now() - t0;
    run.audioContextState = state.context.state;
    run.status = "done";
    state.body = body;
    $("download").disabled = Boolean(body.conversation); // a conversation's reply is its turn: not spoken again
    status(`done: ${run.chunks} chunks`);
    if (body.conversation) document.dispatchEvent(new Event("csm-spoken"));
  } catch (e) {
    run.status = abort.signal.aborted ? "stopped" : "error";
    run.message = e.message;
    if (abort.signal.aborted) status("stopped");
    else if (e instanceof ApiError) { showError(e.message); status(""); }
    else { showError(`The audio stream was cut: ${e.message}`); status(""); }
    if (abort.signal.aborted) player.stop();
  } finally {
    showStats(run);
    $("speak").disabled = false; $("stop").disabled = true;
    if (state.abort === abort) state.abort = null;
  }
}

async function download() {
  clearError();
  const format = $("format").value;
  const body = { ...state.body, response_format: format }; // same seed: the same audio, encoded
  status(`preparing ${format}…`);
  try {
    const response = await api("/v1/audio/speech", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const blob = await response.blob();
    hook.lastDownload = { format, type: blob.type, bytes: blob.size };
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `speech-${body.seed}.${format}`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
    status(`downloaded ${format} (${blob.size} bytes)`);
  } catch (e) { showError(e.message); status(""); }
}

// --- custom voices: a file or a microphone recording, with its transcript ------------------------

function voiceRecorder() {
  return microphone({
    showError,
    onStart: () => { $("record").textContent = "Stop recording"; $("recording").textContent = "recording…"; },
    onRecorded: (blob, seconds) => {
      state.recorded = blob;
      $("record").textContent = "Record from microphone";
      $("recording").textContent = `recorded ${seconds.toFixed(1)} s`;
    },
  });
}

async function createVoice(event) {
  event.preventDefault();
  clearError();
  const file = $("voice-file").files[0];
  const sample = file ?? state.recorded;
  if (!sample) { showError("Choose an audio file or record a sample first."); return; }
  const form = new FormData();
  form.append("name", $("voice-name").value);
  form.append("transcript", $("voice-transcript").value);
  form.append("audio_sample", sample, file ? file.name : `recording.${sample.type.includes("ogg") ? "ogg" : "webm"}`);
  $("upload").disabled = true;
  status("creating voice…");
  try {
    const voice = await (await api("/v1/audio/voices", { method: "POST", body: form })).json();
    await loadModelAndVoices(voice.id);
    status(`voice ${voice.name} created (${voice.id})`);
  } catch (e) { showError(e.message); status(""); }
  finally { $("upload").disabled = false; }
}

// --- wiring --------------------------------------------------------------------------------------

function countChars() { $("count").textContent = `${$("text").value.length}`.replace(/\B(?=(\d{3})+$)/g, ","); }

async function start() {
  $("text").maxLength = MAX_CHARS;
  $("text").addEventListener("input", countChars);
  countChars();
  $("speak").addEventListener("click", speak);
  $("stop").addEventListener("click", () => state.abort?.abort());
  $("download").addEventListener("click", download);
  $("record").addEventListener("click", voiceRecorder());
  $("voice-form").addEventListener("submit", createVoice);
  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem("csm-api-key", $("api-key").value.trim());
    clearError();
    try { await loadModelAndVoices(); $("key-section").hidden = true; } catch (e) { showError(e.message); }
  });
  const num = (id) => ($(id).value === "" ? null : Number($(id).value));
  startLive({
    PcmPlayer, showError, hook,
    audioContext: async () => {
      state.context ??= new AudioContext({ sampleRate: SAMPLE_RATE });
      await state.context.resume();
      return state.context;
    },
    settings: () => ({ voice: $("voice").value, speed: num("speed") ?? 1, seed: num("seed"),
                       temperature: num("temperature") ?? 0.9 }),
  });
  state.conversation = startConversation({ api, showError, hook });
  try { await loadModelAndVoices(); } catch (e) { showError(e.message); }
  hook.ready = true;
}

start();
