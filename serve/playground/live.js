// "Type and hear": what is typed goes to the text-in WebSocket (/v1/audio/speech/stream) as it
// is typed, one event per keystroke, and the server speaks each sentence as soon as it is
// complete, all of them as one stream; "Done" ends the reply (commit), "Stop" cancels it.
// `window.csmPlayground.live` records what happened (for people and for the browser tests).

export function startLive({ PcmPlayer, audioContext, settings, showError, hook }) {
  const $ = (id) => document.getElementById(id);
  const live = (hook.live = { ready: false, opened: 0, deltas: 0, segments: [], samples: 0, responses: [], errors: [] });
  let ws = null, opening = null, sent = "", player = null;
  const connected = () => (opening ??= open().catch((e) => { opening = null; showError(e.message); throw e; }));

  const send = (event) => ws?.readyState === WebSocket.OPEN && ws.send(JSON.stringify(event));

  async function open() {
    const context = await audioContext();
    player = new PcmPlayer(context);
    const key = sessionStorage.getItem("csm-api-key");
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/audio/speech/stream`;
    ws = new WebSocket(url, ["csm-serve", ...(key ? [`bearer.${key}`] : [])]);
    ws.binaryType = "arraybuffer";
    live.opened += 1;
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = () => reject(new Error("cannot connect")); });
    ws.onmessage = (message) => {
      if (message.data instanceof ArrayBuffer) {
        live.samples += player.push(new Uint8Array(message.data)).length;
        return;
      }
      const event = JSON.parse(message.data);
      if (event.type === "response.segment.done") {
        live.segments.push(event.text);
        const item = document.createElement("li");
        item.textContent = `${event.start_s.toFixed(2)}–${event.end_s.toFixed(2)} s: ${event.text}`;
        $("live-segments").append(item);
      } else if (event.type === "response.done") {
        live.responses.push(event.response.status);
        $("live-status").textContent = `${event.response.status}: ${event.response.usage.output_tokens} frames`;
      } else if (event.type === "error") {
        live.errors.push(event.error.message);
        showError(event.error.message);
      }
    };
    ws.onclose = () => { ws = null; opening = null; live.ready = false; };
    const { voice, speed, seed, temperature } = settings();
    send({ type: "session.update", session: { voice, speed, seed, temperature, response_format: "pcm",
                                              audio_transport: "binary" } });
    live.ready = true;
  }

  $("live-text").addEventListener("focus", () => connected().catch(() => {}));
  $("live-text").addEventListener("input", async () => {
    await connected();
    const text = $("live-text").value;  // read after the wait: keystrokes meanwhile go in one delta
    if (text.startsWith(sent) && text.length > sent.length) {  // an edit of text already sent cannot be unsaid
      send({ type: "input_text_buffer.append", text: text.slice(sent.length) });
      live.deltas += 1;
    }
    sent = text;
    $("live-status").textContent = "speaking as you type…";
  });
  $("live-done").addEventListener("click", () => {
    send({ type: "input_text_buffer.commit" });
    $("live-text").value = "";
    sent = "";
  });
  $("live-stop").addEventListener("click", () => { send({ type: "response.cancel" }); player?.stop(); });
}
