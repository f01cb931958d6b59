// "Conversation": the server keeps the dialogue (POST /v1/audio/conversations) and the model
// hears it before each reply. While one is open, "Speak" answers in it (its text becomes the
// model's turn); "Record my turn" adds what you say (the microphone, and the words typed beside
// it) as your turn. `window.csmPlayground.conversation` records what happened (for the tests).

export function startConversation({ api, showError, hook }) {
  const $ = (id) => document.getElementById(id);
  const conv = (hook.conversation = { id: null, turns: [], added: 0 });
  let recorder = null;

  function render() {
    $("conv-turns").replaceChildren(...conv.turns.map((t) => {
      const item = document.createElement("li");
      item.textContent = `${t.source === "audio" ? "You" : "Model"}: ${t.text}`;
      return item;
    }));
    $("conv-status").textContent = conv.id ? `${conv.id}: ${conv.turns.length} turns; Speak answers in it` : "";
    $("conv-start").disabled = conv.id !== null;
    $("conv-end").disabled = $("conv-record").disabled = conv.id === null;
  }

  async function refresh() {
    if (!conv.id) return;
    try { conv.turns = (await (await api(`/v1/audio/conversations/${conv.id}`)).json()).turns; }
    catch (e) { showError(e.message); if (e.status === 404) conv.id = null; }
    render();
  }

  async function begin() {
    try {
      conv.id = (await (await api("/v1/audio/conversations", { method: "POST" })).json()).id;
      conv.turns = [];
    } catch (e) { showError(e.message); }
    render();
  }

  async function end() {
    const id = conv.id;
    conv.id = null;
    conv.turns = [];
    render();
    try { await api(`/v1/audio/conversations/${id}`, { method: "DELETE" }); } catch (e) { showError(e.message); }
  }

  async function addTurn(blob) {
    const form = new FormData();
    form.append("transcript", $("conv-transcript").value);
    form.append("speaker", "1");
    form.append("audio", blob, `turn.${blob.type.includes("ogg") ? "ogg" : "webm"}`);
    try {
      conv.turns = (await (await api(`/v1/audio/conversations/${conv.id}/turns`, { method: "POST", body: form }))
        .json()).turns;
      conv.added += 1;
      $("conv-transcript").value = "";
    } catch (e) { showError(e.message); }
    render();
  }

  async function toggleRecording() {
    if (recorder) { recorder.stop(); return; }
    if (!navigator.mediaDevices?.getUserMedia) {
      showError("The microphone needs a secure page: open the playground over https or on localhost.");
      return;
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const parts = [];
      recorder = new MediaRecorder(stream);
      recorder.ondataavailable = (e) => parts.push(e.data);
      recorder.onstop = () => {
        stream.getTracks().forEach((t) => t.stop());
        const blob = new Blob(parts, { type: recorder.mimeType });
        recorder = null;
        $("conv-record").textContent = "Record my turn";
        addTurn(blob);
      };
      recorder.start();
      $("conv-record").textContent = "Stop and add my turn";
    } catch (e) { showError(`Microphone: ${e.message}`); }
  }

  $("conv-start").addEventListener("click", begin);
  $("conv-end").addEventListener("click", end);
  $("conv-record").addEventListener("click", toggleRecording);
  document.addEventListener("csm-spoken", refresh); // a reply in the conversation became its turn
  render();
  return { id: () => conv.id };
}
