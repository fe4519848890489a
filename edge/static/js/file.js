// File mode: upload to /v1/transcriptions with `stream=true` and read its server-sent events from the
// response body (EventSource cannot POST), then offer the session's SRT / VTT export.

import { api } from "./api.js";

/** `channels` > 1: the recording's channel count, each channel transcribed on its own (results say `channel`). */
export async function transcribe({ file, language, targets, view, onStatus, signal, channels = 1 }) {
  const form = new FormData();
  form.append("file", file);
  form.append("language", language);
  form.append("stream", "true");
  if (targets.length) form.append("targets", targets.join(","));
  if (channels > 1) form.append("channels", String(channels));
  view.clear();
  view.setTargets(targets);
  onStatus(`Uploading ${file.name}…`);
  const resp = await api.fetch("/v1/transcriptions", { method: "POST", body: form, signal });
  onStatus("Transcribing…");
  let sessionId = "";
  for await (const { event, data } of events(resp.body)) {
    if (event === "partial" || event === "final") {
      sessionId = data.session_id || sessionId;
      view.show({ ...data, type: event });
    } else if (event === "error") {
      const err = new Error(data.message);
      err.code = data.code;
      throw err;
    } else if (event === "done") {
      return { sessionId, text: data.text };
    }
  }
  throw new Error("the server ended the stream early");
}

/** Parses text/event-stream from a fetch body. */
export async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "", cr = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    // Lines end in \n, \r\n or \r; a \r\n split across two chunks is one line end, so a trailing \r waits.
    let text = cr + value;
    cr = text.endsWith("\r") ? "\r" : "";
    if (cr) text = text.slice(0, -1);
    buf += text.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += (data ? "\n" : "") + line.slice(5).trimStart();
      }
      if (data) yield { event, data: JSON.parse(data) };
    }
  }
}

/** Saves the server's rendering of a finished session (`translation`: a target's text instead). */
export async function download(sessionId, format, baseName, translation = "") {
  const q = new URLSearchParams({ format });
  if (translation) q.set("translation", translation);
  const resp = await api.fetch(`/v1/sessions/${encodeURIComponent(sessionId)}/transcript?${q}`);
  const blob = await resp.blob();
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `${baseName}${translation ? "." + translation : ""}.${format}`;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}
