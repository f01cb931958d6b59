// One microphone recording at a time, shared by the custom voice and the conversation cards:
// `toggle()` starts recording, or stops it and hands the recorded Blob to `onRecorded`.

export function microphone({ showError, onStart, onRecorded }) {
  let recorder = null;
  return async function toggle() {
    if (recorder) { recorder.stop(); return; }
    if (!navigator.mediaDevices?.getUserMedia) {
      showError("The microphone needs a secure page: open the playground over https or on localhost.");
      return;
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const parts = [];
      const started = performance.now();
      recorder = new MediaRecorder(stream);
      recorder.ondataavailable = (e) => parts.push(e.data);
      recorder.onstop = () => {
        stream.getTracks().forEach((t) => t.stop());
        const blob = new Blob(parts, { type: recorder.mimeType });
        recorder = null;
        onRecorded(blob, (performance.now() - started) / 1000);
      };
      recorder.start();
      onStart();
    } catch (e) { showError(`Microphone: ${e.message}`); }
  };
}
