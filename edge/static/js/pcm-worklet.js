// AudioWorklet: the microphone at the context's rate (44.1 or 48 kHz, usually) → 16 kHz mono int16 frames.
// A windowed-sinc low-pass below 8 kHz, then linear interpolation at the output instants; frames of
// `frameMs` go to the main thread as transferable ArrayBuffers.

const OUT_RATE = 16000;

function lowPass(rate, cutoff, taps) {
  const h = new Float32Array(taps), mid = (taps - 1) / 2, fc = cutoff / rate;
  let sum = 0;
  for (let i = 0; i < taps; i++) {
    const x = i - mid;
    const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (taps - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (taps - 1));
    h[i] = sinc * w;
    sum += h[i];
  }
  for (let i = 0; i < taps; i++) h[i] /= sum;
  return h;
}

class Pcm16k extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const frameMs = options.processorOptions?.frameMs ?? 100;
    this.step = sampleRate / OUT_RATE;  // input samples per output sample
    this.taps = this.step > 1 ? lowPass(sampleRate, 7400, 63) : new Float32Array([1]);
    this.ring = new Float32Array(this.taps.length);
    this.ri = 0;
    this.index = 0;   // input samples seen
    this.next = 0;    // input position of the next output sample
    this.prev = 0;    // previous filtered sample
    this.frame = new Int16Array(Math.round((OUT_RATE * frameMs) / 1000));
    this.n = 0;
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data === "flush") this.emit();
      if (e.data === "stop") { this.emit(); this.running = false; }
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return this.running;
    const len = channels[0].length, taps = this.taps, L = taps.length;
    for (let i = 0; i < len; i++) {
      let x = 0;
      for (let c = 0; c < channels.length; c++) x += channels[c][i];
      this.ring[this.ri] = x / channels.length;
      let acc = 0, j = this.ri;
      for (let k = 0; k < L; k++) {
        acc += taps[k] * this.ring[j];
        j = j === 0 ? L - 1 : j - 1;
      }
      this.ri = (this.ri + 1) % L;
      const g = this.index++;
      while (this.next <= g) {
        const v = this.prev + (acc - this.prev) * (this.next - (g - 1));
        this.push(v);
        this.next += this.step;
      }
      this.prev = acc;
    }
    return this.running;
  }

  push(v) {
    // Rounded: an Int16Array truncates toward zero, a one-step dead zone around silence that Whisper hears.
    const s = Math.round(v * 32768);
    this.frame[this.n++] = s < -32768 ? -32768 : s > 32767 ? 32767 : s;
    if (this.n === this.frame.length) this.emit();
  }

  emit() {
    if (this.n === 0) return;
    const out = this.frame.slice(0, this.n).buffer;
    this.port.postMessage(out, [out]);
    this.n = 0;
  }
}

registerProcessor("pcm16k", Pcm16k);
