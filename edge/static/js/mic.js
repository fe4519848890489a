// Microphone mode: getUserMedia → MediaRecorder (Opus in WebM or Ogg, 32 kbit/s, where the browser has it) or
// else an AudioWorklet (16 kHz int16, 256 kbit/s) → /v1/listen, with live configure and automatic resume. Audio
// captured while the connection is down is kept (up to BUFFER_S) and sent after the resume, so a network drop
// loses neither speech nor finals. `?audio=pcm` in the page's address forces the worklet.

import { api, describeClose, retryDelay } from "./api.js";

const RATE = 16000;
const BUFFER_S = 30;                       // = the server's default resume grace
const BUFFER_BYTES = RATE * 2 * BUFFER_S;
const OPUS_BPS = 32000;                    // asked of MediaRecorder: an eighth of PCM, and as accurate (docs/benchmarks.md#compressed-audio)
const OPUS_BUFFER_BYTES = 64000 / 8 * BUFFER_S;  // recorders overshoot their bitrate: room for 64 kbit/s
const FORCE_PCM = new URLSearchParams(location.search).get("audio") === "pcm";

/** The compressed format this browser records, as Tolk names it, or null (then PCM). */
export function pickCodec() {
  if (FORCE_PCM || typeof MediaRecorder === "undefined") return null;
  for (const [mime, encoding] of [["audio/webm;codecs=opus", "webm_opus"], ["audio/ogg;codecs=opus", "ogg_opus"]]) {
    if (MediaRecorder.isTypeSupported(mime)) return { mime, encoding };
  }
  return null;
}
const GIVE_UP = new Set(["session_resumed", "invalid_start", "unsupported_language", "invalid_targets",
  "too_many_sessions", "session_too_long", "unauthorized", "invalid_token", "token_expired"]);

export class MicSession {
  constructor({ view, onStatus, onEnd, onTargets }) {
    this.view = view;
    this.onStatus = onStatus;
    this.onEnd = onEnd;
    this.onTargets = onTargets;  // the targets the session really has (a refused `configure` keeps the old ones)
    this.targets = [];
    this.ws = null;
    this.sessionId = "";
    this.resumeToken = "";
    this.lastSeq = 0;
    this.started = false;      // the current connection got `started`
    this.stopping = false;
    this.finished = false;
    this.reconnects = 0;
    this.attempt = 0;
    this.pending = [];         // audio frames not yet sent (while connecting or disconnected)
    this.pendingBytes = 0;
    this.dropped = 0;          // bytes of audio lost to a drop longer than BUFFER_S
    this.lastError = null;
    this.settings = { language: "en", targets: [] };
    this.timer = 0;
    this.codec = null;         // {mime, encoding} when recording Opus, else PCM from the worklet
    this.recorder = null;
    this.chunks = Promise.resolve();  // keeps the recorder's blobs in order while they are read
    this.sentBytes = 0;        // audio bytes sent, all connections together
  }

  async start(settings) {
    this.settings = { ...settings };
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    this.codec = pickCodec();
    this.view.setTargets(this.settings.targets);
    if (this.codec) {
      this.record();
      this.connect();
      return;
    }
    this.ctx = new AudioContext();
    await this.ctx.audioWorklet.addModule("/static/js/pcm-worklet.js");
    this.node = new AudioWorkletNode(this.ctx, "pcm16k", { processorOptions: { frameMs: 100 } });
    this.node.port.onmessage = (e) => this.audio(e.data);
    this.source = this.ctx.createMediaStreamSource(this.stream);
    this.source.connect(this.node);
    this.node.connect(this.ctx.destination);  // the worklet outputs silence; connected so it keeps running
    this.view.setTargets(this.settings.targets);
    this.connect();
  }

  /** (Re)starts the recorder. A drop does not restart it: the resumed connection gets the recording's header
   * (EBML, Segment, Tracks) again, then the blocks that follow, so nothing said across the drop is cut off. Only an
   * outage longer than BUFFER_S starts a new recording. */
  record() {
    const old = this.recorder;
    if (old && old.state !== "inactive") {
      this.recorder = null;
      old.stop();
    }
    this.pending = [];          // what the old recording left unsent cannot follow a new header
    this.pendingBytes = 0;
    this.header = null;         // WebM: the recording's bytes before its first Cluster, once they are all in
    this.firstBuf = null;       // the recording's first buffer (it carries the header itself)
    const webm = this.codec.encoding === "webm_opus" ? new WebmElements() : null;
    const rec = new MediaRecorder(this.stream, { mimeType: this.codec.mime, audioBitsPerSecond: OPUS_BPS });
    this.recorder = rec;
    rec.ondataavailable = (e) => {
      if (!e.data.size) return;
      this.chunks = this.chunks.then(() => e.data.arrayBuffer()).then((buf) => {
        if (rec !== this.recorder) return;
        if (webm) {  // blobs end mid-element: pass on whole ones, so a resumed connection starts on a boundary
          buf = webm.push(buf);
          if (!this.header && webm.header) this.header = webm.header;
          if (!buf.byteLength) return;
        }
        if (!this.firstBuf) this.firstBuf = buf;
        this.audio(buf);
      });
    };
    rec.start(100);
  }

  connect() {
    this.started = false;
    this.streamed = false;      // this connection has had its container header
    this.lastError = null;
    const ws = new WebSocket(api.ws("/v1/listen"));
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      const encoding = this.codec ? this.codec.encoding : "pcm_s16le";
      const start = { type: "start", sample_rate: RATE, encoding, language: this.settings.language,
                      targets: this.settings.targets };
      if (this.settings.diarize) start.diarize = true;  // speaker labels (S1, S2...) on finals
      if (this.sessionId) Object.assign(start, { session_id: this.sessionId, resume_token: this.resumeToken,
                                                 resume_from: this.lastSeq });
      ws.send(JSON.stringify(start));
    };
    ws.onmessage = (e) => { if (typeof e.data === "string") this.message(JSON.parse(e.data)); };
    ws.onclose = (e) => this.closed(ws, e);
  }

  message(m) {
    switch (m.type) {
      case "started":
        this.started = true;
        this.attempt = 0;
        this.sessionId = m.session_id;
        this.resumeToken = m.resume_token;
        this.targets = m.targets;
        if (m.resumed) this.onStatus(`Reconnected: ${m.replayed} missed caption(s) recovered.`);
        else this.onStatus("Listening… speak now.");
        // Targets or language changed while the connection was down: the resumed session gets them now.
        if (m.resumed && (m.language !== this.settings.language || !sameList(m.targets, this.settings.targets))) {
          this.configure(this.settings);
        }
        this.flush();
        if (this.stopping) this.ws.send(JSON.stringify({ type: "stop" }));
        break;
      case "speakers":  // a final's speaker labels corrected (same seq as the final)
        this.view.relabel(m);
        break;
      case "partial":
      case "final":
        if (m.seq <= this.lastSeq) return;
        this.lastSeq = m.seq;
        this.view.show(m);
        break;
      case "configured":
        this.targets = m.targets;
        this.onTargets?.(m.targets);
        this.view.setTargets(m.targets);
        this.onStatus(`Now: ${m.language}${m.targets.length ? " → " + m.targets.join(", ") : ""}.`);
        break;
      case "done":
        this.finished = true;
        this.onStatus("Done.");
        break;
      case "error":
        this.lastError = m;
        this.onStatus(`${m.message} (${m.code})`, { error: true });
        if (m.code === "unsupported_pair" || m.code === "invalid_configure") {
          this.settings = { ...this.settings, targets: this.targets };  // refused: the session kept its targets
          this.onTargets?.(this.targets);
        }
        break;
    }
  }

  closed(ws, e) {
    if (ws !== this.ws) return;
    this.started = false;
    const err = this.lastError;
    if (this.finished || (this.stopping && !this.sessionId)) return this.end();
    if (err && err.code === "unknown_session") {  // expired while away: carry on as a new session
      this.sessionId = "";
      this.lastSeq = 0;
    } else if (err && GIVE_UP.has(err.code)) {
      return this.end(describeClose(e, err));
    }
    if (this.recorder && !this.stopping && !this.header) this.record();  // Ogg: its pages cannot be resumed
    const delay = retryDelay(this.attempt++);
    this.reconnects += 1;
    this.onStatus(`Connection lost (${describeClose(e, err)}); reconnecting in ${(delay / 1000).toFixed(1)} s…`,
                  { error: true });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  audio(buf) {
    if (this.stopping && this.node === null) return;
    this.pending.push(buf);
    this.pendingBytes += buf.byteLength;
    if (this.codec && this.pendingBytes > OPUS_BUFFER_BYTES) {  // an outage longer than BUFFER_S
      this.dropped += this.pendingBytes;
      this.record();
      return;
    }
    while (this.pendingBytes > BUFFER_BYTES) {
      const old = this.pending.shift();
      this.pendingBytes -= old.byteLength;
      this.dropped += old.byteLength;
    }
    if (this.started) this.flush();
  }

  flush() {
    if (this.codec && !this.streamed && this.pending.length && this.ws.readyState === WebSocket.OPEN) {
      if (this.pending[0] !== this.firstBuf && this.header) this.ws.send(this.header);  // a resumed recording
      this.streamed = true;
    }
    while (this.pending.length && this.ws.readyState === WebSocket.OPEN) {
      const buf = this.pending.shift();
      this.pendingBytes -= buf.byteLength;
      this.sentBytes += buf.byteLength;
      this.ws.send(buf);
    }
  }

  configure(settings) {
    this.settings = { ...settings };
    if (this.started && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({ type: "configure", language: settings.language, targets: settings.targets }));
    }
  }

  /** Stops the microphone, sends what it still had, and waits for the last finals (`done`). */
  async stop() {
    if (this.stopping) return;
    this.stopping = true;
    const rec = this.recorder;
    if (rec && rec.state !== "inactive") {  // its last blob comes before `stop`
      await new Promise((resolve) => { rec.onstop = resolve; rec.stop(); });
      await this.chunks;
    }
    if (this.node) {
      this.node.port.postMessage("stop");  // its last partial frame arrives before the port closes
      await new Promise((r) => setTimeout(r, 150));
      this.source.disconnect();
      this.node.disconnect();
      this.node = null;
    }
    this.stream?.getTracks().forEach((t) => t.stop());
    await this.ctx?.close();
    this.onStatus("Finishing the last sentence…");
    if (this.started) {
      this.flush();
      this.ws.send(JSON.stringify({ type: "stop" }));
    } else if (!this.sessionId) {
      clearTimeout(this.timer);
      this.ws?.close();
      this.end();
    }
  }

  end(reason = "") {
    clearTimeout(this.timer);
    if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
    this.node?.disconnect();
    this.stream?.getTracks().forEach((t) => t.stop());
    if (this.ctx && this.ctx.state !== "closed") this.ctx.close();
    if (reason) this.onStatus(reason, { error: true });
    this.onEnd?.(this);
  }
}

/** Cuts a growing WebM recording into whole elements (Segment and Cluster, of unknown size, are entered: only
 * their headers are cut off), and keeps what comes before the first Cluster as the header a new connection needs
 * ahead of later blocks. */
class WebmElements {
  constructor() {
    this.buf = new Uint8Array(0);
    this.header = null;
    this.head = [];
  }

  /** Appends a blob; returns the whole elements completed so far (maybe none). */
  push(blob) {
    const b = new Uint8Array(this.buf.length + blob.byteLength);
    b.set(this.buf);
    b.set(new Uint8Array(blob), this.buf.length);
    let pos = 0;
    for (;;) {
      const id = vint(b, pos, true);
      const size = id && vint(b, pos + id.len, false);
      if (!size) break;
      const entered = id.value === 0x18538067 || id.value === 0x1f43b675;  // Segment, Cluster
      const end = pos + id.len + size.len + (entered ? 0 : size.value);
      if (!entered && size.value < 0) throw new Error("WebM element of unknown size");
      if (end > b.length) break;
      if (!this.header && id.value === 0x1f43b675) this.header = concat(this.head, b.subarray(0, pos));
      pos = end;
    }
    if (!this.header) this.head.push(b.slice(0, pos));
    this.buf = b.slice(pos);
    return b.slice(0, pos).buffer;
  }
}

/** An EBML variable-length number at `pos`, or null when it is not all there yet (-1: unknown size). */
function vint(b, pos, keepMarker) {
  if (pos >= b.length) return null;
  const first = b[pos];
  const len = Math.clz32(first) - 23;
  if (len < 1 || len > 8) throw new Error("not a WebM stream");
  if (pos + len > b.length) return null;
  let value = keepMarker ? first : first & (0xff >> len);
  let ones = value === (0xff >> len);
  for (let i = 1; i < len; i++) {
    value = value * 256 + b[pos + i];
    ones = ones && b[pos + i] === 0xff;
  }
  return { value: !keepMarker && ones ? -1 : value, len };
}

function concat(parts, tail) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0) + tail.length);
  let at = 0;
  for (const p of [...parts, tail]) {
    out.set(p, at);
    at += p.length;
  }
  return out.buffer;
}

const sameList = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
