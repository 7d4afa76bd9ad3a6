// Does every viewer reach the final count? Stock k6 (no extension): VIEWERS virtual users each
// open GET /realtime/{code} with k6/http and hold it; a clicks scenario clicks the link CLICKS
// times; a closer, once the server has counted them (and SETTLE seconds more for the last
// frame), reads the count and deletes the link. Deletion sends every open stream a last
// `event: deleted` frame carrying the final clickCount and ends it, so each viewer's request
// returns the whole stream, which it parses and checks: ids never decrease, id == clickCount,
// its last count frame and the deleted frame both carry CLICKS. The run also fails unless the
// server counted exactly the 302s k6 received.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e API_KEY=... load-tests/k6/sse-final-count.js
//
// Shaped by env variables (--vus/--duration would replace the three scenarios): VIEWERS (100),
// CLICKS (1000), CLICK_VUS (8, the clickers), WARMUP (seconds for the viewers to connect, 2),
// CLICK_SECONDS (longest the clicks may take, 60), SETTLE (seconds between the last counted
// click and the deletion, 1). What it cannot measure: when each frame arrived (k6/http gives
// the body only at the end); sse-fanout.js with xk6-sse does.
import http from 'k6/http';
import { check, fail } from 'k6';
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
import { SSE_THRESHOLDS, StreamCheck, closeLink, parseStream } from './lib/sse.js';

const VIEWERS = intEnv('VIEWERS', 100);
const CLICKS = intEnv('CLICKS', 1000);
const CLICK_VUS = intEnv('CLICK_VUS', 8);
const WARMUP = intEnv('WARMUP', 2);
const CLICK_SECONDS = intEnv('CLICK_SECONDS', 60);
const SETTLE = intEnv('SETTLE', 1);
// Longest a viewer holds its stream: until the closer is done at the latest, plus a margin.
const HOLD_SECONDS = WARMUP + CLICK_SECONDS + SETTLE + 30;

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
      executor: 'shared-iterations',
      exec: 'click',
      vus: Math.max(1, Math.min(CLICK_VUS, CLICKS)),
      iterations: Math.max(1, CLICKS),
      startTime: `${WARMUP}s`,
      maxDuration: `${CLICK_SECONDS}s`,
    },
    closer: {
      executor: 'per-vu-iterations',
      exec: 'closer',
      vus: 1,
      iterations: 1,
      startTime: `${WARMUP}s`,
      maxDuration: `${CLICK_SECONDS + SETTLE + 20}s`,
    },
  },
  thresholds: Object.assign(baseThresholds(), LOSS_THRESHOLD, SSE_THRESHOLDS, {
    'http_req_duration{kind:click}': ['p(95)<250', 'p(99)<500'],
  }),
};

export function setup() {
  requireKey();
  if (!(CLICKS > 0)) {
    fail(`CLICKS must be a positive number, got ${__ENV.CLICKS}`);
  }
  const code = `ssf-${runId()}`;
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
  // The stream's duration is how long it was held, so kind:sse stays out of the latency
  // thresholds.
  const res = http.get(`${BASE_URL}/realtime/${data.code}`, {
    timeout: `${HOLD_SECONDS}s`,
    tags: { kind: 'sse', name: 'GET /realtime/{code}' },
  });
  check(res, { 'stream: opened with 200': (r) => r.status === 200 }, { kind: 'sse' });
  const stream = new StreamCheck();
  for (const event of parseStream(res.body)) {
    stream.onEvent(event);
  }
  stream.finish(CLICKS);
}

export function click(data) {
  redirect(data.code, data.target, 'click');
}

export function closer(data) {
  closeLink(data.code, CLICKS, CLICK_SECONDS, SETTLE);
}

export function handleSummary(data) {
  return summaryFiles(data, 'sse-final-count', {
    viewers: VIEWERS,
    clicks: CLICKS,
    clickVus: CLICK_VUS,
    warmup: WARMUP,
    settle: SETTLE,
  });
}
