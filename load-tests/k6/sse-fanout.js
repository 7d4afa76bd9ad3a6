// Live-count fan-out with frame timing: VIEWERS virtual users each hold GET /realtime/{code}
// open with xk6-sse while a separate scenario clicks the link at RATE clicks per second for
// SECONDS (constant-arrival-rate). Each viewer checks every frame (id == data.clickCount, ids
// never decrease) and records how long after its click (clickAnalytics.createdAt) a frame
// arrived. Viewers keep their streams until the clicks end: then a closer reads the server's
// count (the loss check: it must equal the 302s k6 received) and deletes the link, which sends
// every stream a last `event: deleted` frame with the final clickCount and ends it; each viewer
// checks its last count frame reached that count.
//
// Needs k6 built with the xk6-sse extension (see README.md; not run in this repository's CI):
//   xk6 build v1.1.0 --with github.com/phymbert/xk6-sse@v0.1.11
//   ./k6 run -e BASE_URL=http://127.0.0.1:8080 -e API_KEY=... load-tests/k6/sse-fanout.js
// sse-final-count.js checks the same final count with stock k6 (without frame timing).
//
// Shaped by env variables, not by --vus/--duration (those would replace the three scenarios):
// VIEWERS (100), RATE (clicks/s, 50), SECONDS (length of the click phase, 30), WARMUP (seconds
// the viewers get to connect before the first click, 3), SETTLE (seconds between the end of the
// clicks and the deletion, 1).
import http from 'k6/http';
import { check, fail } from 'k6';
import { Counter } from 'k6/metrics';
import sse from 'k6/x/sse';
import {
  BASE_URL,
  LOSS_THRESHOLD,
  TARGET,
  TREND_STATS,
  apiHeaders,
  baseThresholds,
  intEnv,
  redirect,
  requireKey,
  runId,
  summaryFiles,
} from './lib/common.js';
import { SSE_THRESHOLDS, StreamCheck, closeLink } from './lib/sse.js';

const VIEWERS = intEnv('VIEWERS', 100);
const RATE = intEnv('RATE', 50);
const SECONDS = intEnv('SECONDS', 30);
const WARMUP = intEnv('WARMUP', 3);
const SETTLE = intEnv('SETTLE', 1);
// Longest a viewer holds its stream: until the closer is done at the latest, plus a margin.
const HOLD_SECONDS = WARMUP + SECONDS + SETTLE + 40;

export const options = {
  maxRedirects: 0, // k6 follows redirects by default; a 302 is the success answer here
  summaryTrendStats: TREND_STATS,
  scenarios: {
    viewers: {
      executor: 'per-vu-iterations',
      exec: 'viewer',
      vus: VIEWERS,
      iterations: 1,
      maxDuration: `${HOLD_SECONDS}s`,
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
    closer: {
      executor: 'per-vu-iterations',
      exec: 'closer',
      vus: 1,
      iterations: 1,
      // After the clicks (and the 30 s they may take to finish at most).
      startTime: `${WARMUP + SECONDS}s`,
      maxDuration: `${SETTLE + 40}s`,
    },
  },
  thresholds: Object.assign(baseThresholds(), LOSS_THRESHOLD, SSE_THRESHOLDS, {
    dropped_iterations: ['count==0'], // the clicks went out at RATE
    'http_req_duration{kind:click}': ['p(95)<250', 'p(99)<500'],
    linkpulse_sse_errors: ['count==0'],
    linkpulse_sse_click_to_frame: ['p(95)<500', 'p(99)<1000'],
  }),
};

const sseErrors = new Counter('linkpulse_sse_errors'); // error events on a stream

function errorText(e) {
  if (e && typeof e.error === 'function') {
    return e.error();
  }
  return String(e);
}

export function setup() {
  requireKey();
  const code = `sse-${runId()}`;
  const res = http.post(`${BASE_URL}/api/links`, JSON.stringify({ url: TARGET, code }), {
    headers: apiHeaders(),
    tags: { kind: 'setup', name: 'POST /api/links' },
  });
  if (res.status !== 201) {
    fail(`creating link ${code}: ${res.status} ${res.body}`);
  }
  return { code, target: res.json('url') };
}

export function viewer(data) {
  const stream = new StreamCheck();
  sseErrors.add(0); // so the metric has a sample even when nothing goes wrong
  // Held until the server ends the stream after the deleted frame (or HOLD_SECONDS).
  const res = sse.open(
    `${BASE_URL}/realtime/${data.code}`,
    { timeout: `${HOLD_SECONDS}s`, tags: { kind: 'sse' } },
    function (client) {
      client.on('event', function (event) {
        stream.onEvent(event, Date.now());
      });
      client.on('error', function (e) {
        sseErrors.add(1);
        console.error(`VU ${__VU}: stream error: ${errorText(e)}`);
      });
    },
  );
  check(res, { 'stream: opened with 200': (r) => !!r && r.status === 200 }, { kind: 'sse' });
  // The number of clicks is the server's (checked against the 302s by the closer).
  stream.finish(undefined);
}

export function click(data) {
  redirect(data.code, data.target, 'click');
}

export function closer(data) {
  closeLink(data.code, undefined, 30, SETTLE);
}

export function handleSummary(data) {
  return summaryFiles(data, 'sse-fanout', {
    viewers: VIEWERS,
    rate: RATE,
    seconds: SECONDS,
    warmup: WARMUP,
    settle: SETTLE,
  });
}
