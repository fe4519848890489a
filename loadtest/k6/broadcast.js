// Broadcast listeners for `python -m loadtest.broadcast` (which starts Tolk, the radio and this script).
// Each VU is one listener: it subscribes to a channel, counts messages and measures caption lag on the
// timestamped captions the driver injects ("lag:<epoch ms>"), and leaves after HOLD_S seconds.
import ws from 'k6/ws';
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
      gracefulRampDown: '0s',
    },
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export default function () {
  const channel = channels[__VU % channels.length];
  ws.connect(__ENV.URL, {}, (socket) => {
    socket.on('open', () => socket.send(JSON.stringify({ type: 'subscribe', channel: channel })));
    socket.on('binaryMessage', () => {
      messages.add(1);
      audioFrames.add(1);
    });
    socket.on('message', (data) => {
      const now = Date.now();
      messages.add(1);
      if (data.indexOf('"type": "final"') < 0 || data.indexOf('"replay"') >= 0) return;  // cheap: no parse
      captions.add(1);
      const at = data.indexOf('"text": "lag:');
      if (at >= 0) lag.add(now - parseFloat(data.slice(at + 13)));
    });
    socket.setTimeout(() => socket.close(), holdMs);
  });
}
