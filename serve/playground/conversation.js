// "Conversation": the server keeps the dialogue (POST /v1/audio/conversations) and the model
// hears it before each reply. While one is open, "Speak" answers in it (its text becomes the
// model's turn); "Record my turn" adds what you say (the microphone, and the words typed beside
// it) as your turn. `window.csmPlayground.conversation` records what happened (for the tests).

import { microphone } from "./microphone.js";

export function startConversation({ api, showError, hook }) {
  const $ = (id) => document.getElementById(id);
  const conv = (hook.conversation = { id: null, turns: [], added: 0 });

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

  $("conv-start").addEventListener("click", begin);
  $("conv-end").addEventListener("click", end);
  $("conv-record").addEventListener("click", microphone({
    showError,
    onStart: () => { $("conv-record").textContent = "Stop and add my turn"; },
    onRecorded: (blob) => { $("conv-record").textContent = "Record my turn"; addTurn(blob); },
  }));
  document.addEventListener("csm-spoken", refresh); // a reply in the conversation became its turn
  render();
  return { id: () => conv.id };
}
