// Broadcast listeners for `python -m loadtest.broadcast` (which starts Tolk, the radio and this script).
// Each VU is one listener: it subscribes to a channel, counts messages and measures caption lag on the
// timestamped captions the driver injects ("lag:<epoch ms>"), and leaves after HOLD_S seconds.
import { WebSocket } from 'k6/experimental/websockets';
import { Counter, Trend } from 'k6/metrics';

const lag = new Trend('caption_lag_ms', true);
const messages = new Counter('ws_messages');
const audioFrames = new Counter('audio_frames');
const captions = new Counter('captions');
const channels = (__ENV.CHANNELS || 'radio').split(',');
const holdMs = Number(__ENV.HOLD_S || '30') * 1000;

export const options = {
  scenarios: {
    listeners: {
      executor: 'ramping-vus',
      startVUs: 1,
      stages: JSON.parse(__ENV.STAGES || '[{"duration":"10s","target":10}]'),
      gracefulRampDown: '5s',
    },
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export default function () {
  const channel = channels[__VU % channels.length];
  const ws = new WebSocket(__ENV.URL);
  ws.binaryType = 'arraybuffer';
  ws.onopen = () => ws.send(JSON.stringify({ type: 'subscribe', channel: channel }));
  ws.onmessage = (e) => {
    messages.add(1);
    if (typeof e.data !== 'string') {
      audioFrames.add(1);
      return;
    }
    const m = JSON.parse(e.data);
    if (m.type === 'final' && !m.replay) {
      captions.add(1);
      if (m.text.startsWith('lag:')) lag.add(Date.now() - Number(m.text.slice(4)));
    }
  };
  ws.onerror = () => {};
  setTimeout(() => ws.close(), holdMs);
}
