// Channel mode: subscribe on /v1/listen, play the relayed MP3 through Media Source Extensions on the
// channel's stream clock (each binary frame: float64le stream time + MP3, appended at that time), and show
// each caption when the audio reaches it (its `end`: every word of it has been heard), not when it arrived.

import { api, describeClose, retryDelay } from "./api.js";

const START_BUFFER_S = 2.0;   // audio buffered before playback starts: captions are ready when the audio gets there
const MAX_BEHIND_S = 10;      // further behind the live edge than this (a stall): jump forward
const KEEP_S = 30;            // audio kept behind the playhead

export class ChannelPlayer {
  constructor({ audio, view, onStatus, onTargets }) {
    this.audio = audio;
    this.onTargets = onTargets;
    this.view = view;
    this.onStatus = onStatus;
    this.ws = null;
    this.channel = "";
    this.targets = [];
    this.pending = [];        // live captions waiting for the audio to reach them
    this.shown = [];          // {seq, kind, start, end, audioTime}: when each caption went up, on the audio clock
    this.appendQueue = [];
    this.leaving = false;
    this.attempt = 0;
    this.playing = false;
    this.lastTime = -1;
    this.frames = 0;
    this.tick = setInterval(() => this.release(), 50);
  }

  subscribe(channel, targets) {
    this.channel = channel;
    this.targets = [...targets];
    this.leaving = false;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.send();
    else if (!this.ws || this.ws.readyState > WebSocket.OPEN) this.connect();
  }

  setTargets(targets) {
    this.targets = [...targets];
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "configure", targets }));
  }

  send() {
    // No target picked: the channel's own default targets apply (shown in the picker once subscribed).
    const msg = { type: "subscribe", channel: this.channel };
    if (this.targets.length) msg.targets = this.targets;
    // Back on the same channel after a drop: only the finals missed meanwhile are replayed, none twice.
    if (this.lastFinal && this.lastFinal.channel === this.channel) msg.after = this.lastFinal.cursor;
    this.ws.send(JSON.stringify(msg));
  }

  connect() {
    this.lastError = null;
    const ws = new WebSocket(api.ws("/v1/listen"));
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => this.send();
    ws.onmessage = (e) => (typeof e.data === "string" ? this.message(JSON.parse(e.data)) : this.frame(e.data));
    ws.onclose = (e) => {
      if (ws !== this.ws || this.leaving) return;
      if (this.lastError && ["unknown_channel", "invalid_subscribe"].includes(this.lastError.code)) return;
      const delay = retryDelay(this.attempt++);
      this.onStatus(`Connection lost (${describeClose(e, this.lastError)}); reconnecting…`, { error: true });
      setTimeout(() => { if (!this.leaving) this.connect(); }, delay);
    };
  }

  message(m) {
    switch (m.type) {
      case "subscribed":
        this.attempt = 0;
        if (m.channel !== this.current) {  // a new channel (not a reconnect to the same one): start over
          this.current = m.channel;
          this.view.clear();
          this.resetMedia();
        }
        this.targets = [...m.targets];
        this.view.setTargets(m.targets);
        this.onTargets?.(m.targets);
        this.onStatus(`Listening to ${m.channel}${m.targets.length ? " → " + m.targets.join(", ") : ""}.`);
        break;
      case "configured":
        this.view.setTargets(m.targets);
        break;
      case "partial":
      case "final":
        if (m.type === "final" && m.text) {
          this.lastFinal = { channel: m.channel, cursor: { session_id: m.session_id, seq: m.seq } };
        }
        if (m.replay) this.view.show(m, { replay: true });   // history from before we joined
        else this.pending.push(m);
        break;
      case "channel_ended":
        this.onStatus(`${this.current}: the broadcast ended.`);
        break;
      case "unsubscribed":
        this.current = "";
        this.onStatus("Left the channel.");
        break;
      case "error":
        this.lastError = m;
        this.onStatus(`${m.message} (${m.code})`, { error: true });
        break;
    }
  }

  resetMedia() {
    this.pending = [];
    this.appendQueue = [];
    this.playing = false;
    this.clockless = typeof MediaSource === "undefined";
    this.lastTime = -1;
    this.firstTime = null;
    if (this.clockless) return;
    this.ms = new MediaSource();
    this.sb = null;
    if (this.audio.src) URL.revokeObjectURL(this.audio.src);
    this.audio.src = URL.createObjectURL(this.ms);
    this.ms.addEventListener("sourceopen", () => {
      this.sb = this.ms.addSourceBuffer("audio/mpeg");
      this.sb.addEventListener("updateend", () => this.pump());
      this.pump();
    }, { once: true });
  }

  frame(buf) {
    if (!this.current || buf.byteLength <= 8 || !this.ms) return;
    const t = new DataView(buf).getFloat64(0, true);
    if (t < this.lastTime - 1) {  // a new run of the channel: its clock starts again
      this.resetMedia();
    }
    this.lastTime = t;
    if (this.firstTime === null) this.firstTime = t;
    this.frames += 1;
    this.appendQueue.push({ t, data: buf.slice(8) });
    this.pump();
  }

  pump() {
    const sb = this.sb;
    if (!sb || sb.updating || this.ms.readyState !== "open") return;
    const cur = this.audio.currentTime;
    if (this.playing && sb.buffered.length && cur - sb.buffered.start(0) > KEEP_S + 5) {
      sb.remove(0, cur - KEEP_S);
      return;
    }
    const next = this.appendQueue.shift();
    if (!next) return this.maybePlay();
    sb.timestampOffset = next.t;
    try {
      sb.appendBuffer(next.data);
    } catch (err) {
      this.onStatus(`audio: ${err.message}`, { error: true });
    }
  }

  maybePlay() {
    const b = this.sb?.buffered;
    if (!b || !b.length) return;
    const end = b.end(b.length - 1);
    if (!this.playing && end - this.firstTime >= START_BUFFER_S) {
      this.playing = true;
      this.audio.currentTime = Math.max(b.start(0), this.firstTime);
      this.audio.play().catch(() => {
        this.clockless = true;  // autoplay refused: captions as they arrive until the listener presses play
        this.onStatus("Press play to hear the channel (captions follow the audio).");
      });
    } else if (this.playing && end - this.audio.currentTime > MAX_BEHIND_S) {
      this.audio.currentTime = end - START_BUFFER_S;
    } else if (this.playing) {  // a hole in the audio (a reconnect): carry on from the next range
      const cur = this.audio.currentTime;
      for (let i = 0; i < b.length; i++) {
        if (cur >= b.start(i) && cur <= b.end(i)) break;
        if (b.start(i) > cur) { this.audio.currentTime = b.start(i); break; }
      }
    }
  }

  /** Captions go up when the audio has played past their end; with no audio to follow (autoplay refused,
   * paused by the listener), as they arrive. */
  release() {
    const clockRunning = this.playing && !this.audio.paused;
    if (!clockRunning && !this.clockless && !(this.playing && this.audio.paused)) return;  // audio starting
    const now = this.audio.currentTime;
    while (this.pending.length) {
      const r = this.pending[0];
      if (clockRunning && r.end > now) break;
      this.pending.shift();
      this.view.show(r, { audioTime: clockRunning ? now : null });
      this.shown.push({ seq: r.seq, kind: r.type, start: r.start, end: r.end, audioTime: clockRunning ? now : null });
      if (this.shown.length > 1000) this.shown.shift();
    }
  }

  leave() {
    this.leaving = true;
    this.current = "";
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "unsubscribe" }));
    this.audio.pause();
    this.playing = false;
  }
}
