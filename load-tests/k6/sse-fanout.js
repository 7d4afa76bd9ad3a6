// Live-count fan-out: VIEWERS virtual users each hold GET /realtime/{code} open while a separate
// scenario clicks the link at RATE clicks per second (constant-arrival-rate). Each viewer checks
// that every frame's id equals its data.clickCount and that ids never decrease, and records how
// long after the click (clickAnalytics.createdAt) its frame arrived.
//
// Needs k6 built with the xk6-sse extension (see README.md):
//   xk6 build --with github.com/phymbert/xk6-sse
//   ./k6 run -e BASE_URL=http://127.0.0.1:8080 -e API_KEY=... load-tests/k6/sse-fanout.js
//
// The load is shaped by env variables, not by --vus/--duration (those would replace the two
// scenarios): VIEWERS (100), RATE (clicks/s, 50), SECONDS (length of the click phase, 30),
// WARMUP (seconds the viewers get to connect before the first click, 3).
import http from 'k6/http';
import { check, fail, sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import sse from 'k6/x/sse';

const VIEWERS = parseInt(__ENV.VIEWERS || '100', 10);
const RATE = parseInt(__ENV.RATE || '50', 10);
const SECONDS = parseInt(__ENV.SECONDS || '30', 10);
const WARMUP = parseInt(__ENV.WARMUP || '3', 10);

export const options = {
  maxRedirects: 0, // k6 follows redirects by default; a 302 is the success answer here
  scenarios: {
    viewers: {
      executor: 'per-vu-iterations',
      exec: 'viewer',
      vus: VIEWERS,
      iterations: 1,
      // A viewer closes its stream at the first frame or heartbeat after the click phase; this
      // bounds it if neither comes (e.g. RATE=0 and a long --sse-heartbeat).
      maxDuration: `${WARMUP + SECONDS + 30}s`,
      gracefulStop: '5s',
    },
    clicks: {
      executor: 'constant-arrival-rate',
      exec: 'click',
      rate: RATE,
      timeUnit: '1s',
      duration: `${SECONDS}s`,
      startTime: `${WARMUP}s`,
      preAllocatedVUs: 10,
      maxVUs: 100,
    },
  },
  thresholds: {
    checks: ['rate==1.0'],
    http_req_failed: ['rate<0.001'], // the clicks and API calls (k6/http only)
    'http_req_duration{kind:click}': ['p(95)<250'],
    linkpulse_sse_frames: ['count>0'],
    linkpulse_sse_errors: ['count==0'],
    linkpulse_sse_click_to_frame: ['p(95)<500'],
  },
};

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const API_KEY = __ENV.API_KEY || '';
const TARGET = 'https://example.com/target';
// A viewer keeps its stream until just before the clicks stop, so a frame is still coming to
// trigger the close (a stream is only closed from inside an event handler).
const HOLD_MS = Math.max(1, WARMUP + SECONDS - 1) * 1000;

const frames = new Counter('linkpulse_sse_frames'); // data frames received, all viewers
const heartbeats = new Counter('linkpulse_sse_heartbeats'); // ": keep-alive" comments received
const namedEvents = new Counter('linkpulse_sse_named_events'); // `stats` events, all viewers
const sseErrors = new Counter('linkpulse_sse_errors'); // error events on a stream still wanted
const clickToFrame = new Trend('linkpulse_sse_click_to_frame', true); // receipt time - createdAt
const clicks302 = new Counter('linkpulse_redirects_302');

function apiHeaders() {
  return { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' };
}

function runId() {
  return `${__ENV.CODE_PREFIX || 'k6'}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

function errorText(e) {
  if (e && typeof e.error === 'function') {
    return e.error();
  }
  return String(e);
}

export function setup() {
  if (!API_KEY) {
    fail('set the API key: k6 run -e API_KEY=<key> ...');
  }
  const code = `sse-${runId()}`;
  const res = http.post(`${BASE_URL}/api/links`, JSON.stringify({ url: TARGET, code }), {
    headers: apiHeaders(),
    tags: { kind: 'setup' },
  });
  if (res.status !== 201) {
    fail(`creating link ${code}: ${res.status} ${res.body}`);
  }
  return { code };
}

export function viewer(data) {
  const holdUntil = Date.now() + HOLD_MS;
  let received = 0;
  let lastId = -1;
  let closing = false;
  sseErrors.add(0); // so the metric has a sample even when nothing goes wrong

  const res = sse.open(`${BASE_URL}/realtime/${data.code}`, { tags: { kind: 'sse' } }, function (client) {
    client.on('open', function () {
      // connected: the first chunk (retry: hint and current state) follows
    });

    client.on('event', function (event) {
      const receivedAt = Date.now();
      if (event.name && event.name !== 'message') {
        // A named event (`stats`: the link's aggregates); the original's clients ignore these.
        namedEvents.add(1);
      } else if (event.data) {
        received += 1;
        frames.add(1);
        let body = null;
        try {
          body = JSON.parse(event.data);
        } catch (e) {
          body = null;
        }
        const id = parseInt(event.id, 10);
        const count = body ? body.clickCount : undefined;
        check(
          { id, count, lastId },
          {
            'frame: data is JSON with a clickCount': (f) => typeof f.count === 'number',
            'frame: id equals data.clickCount': (f) => f.id === f.count,
            'frame: ids never decrease': (f) => f.id >= f.lastId,
          },
          { kind: 'sse' },
        );
        if (id > lastId) {
          lastId = id;
        }
        // The first frame is the state at connection time; its click may be old.
        if (received > 1 && body && body.clickAnalytics && body.clickAnalytics.createdAt) {
          const createdAt = Date.parse(body.clickAnalytics.createdAt);
          if (!isNaN(createdAt)) {
            clickToFrame.add(receivedAt - createdAt);
          }
        }
      } else if (event.comment) {
        heartbeats.add(1);
      }
      if (!closing && receivedAt >= holdUntil) {
        closing = true;
        client.close();
      }
    });

    client.on('error', function (e) {
      if (closing) {
        return; // errors from closing our own stream
      }
      sseErrors.add(1);
      console.error(`VU ${__VU}: stream error: ${errorText(e)}`);
    });
  });

  check(
    res,
    {
      'stream: opened with 200': (r) => !!r && r.status === 200,
      'stream: delivered the initial frame': () => received >= 1,
    },
    { kind: 'sse' },
  );
}

export function click(data) {
  const res = http.get(`${BASE_URL}/${data.code}`, {
    redirects: 0,
    responseType: 'none',
    tags: { kind: 'click', name: 'GET /{code}' },
  });
  if (res.status === 302) {
    clicks302.add(1);
  }
  check(res, { 'click: status is 302': (r) => r.status === 302 }, { kind: 'click' });
}

export function teardown(data) {
  sleep(1);
  const res = http.get(`${BASE_URL}/api/links/${data.code}`, {
    headers: apiHeaders(),
    tags: { kind: 'read', name: 'GET /api/links/{code}' },
  });
  check(res, { 'teardown: read link status is 200': (r) => r.status === 200 });
  const count = res.status === 200 ? res.json('clickCount') : 'unknown';
  console.log(
    `link ${data.code}: server clickCount=${count}; compare with linkpulse_redirects_302 ` +
      '(302s k6 received) and linkpulse_sse_frames in the summary below',
  );
}
