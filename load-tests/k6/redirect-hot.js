// One hot short link under load: how fast GET /{code} answers its 302, and whether the server
// counted exactly the redirects k6 received (the run fails otherwise).
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e API_KEY=... load-tests/k6/redirect-hot.js
//   k6 run -e API_KEY=... -e RATE=5000 -e DURATION=20s load-tests/k6/redirect-hot.js   # open model
//
// setup() creates one link with a code unique to this run; every iteration follows it once
// (redirects: 0, so the 302 itself is the answer measured); teardown() subtracts the link's
// clickCount from linkpulse_clicks_unaccounted, whose threshold is count==0.
import { fail } from 'k6';
import http from 'k6/http';
import {
  BASE_URL,
  LOSS_THRESHOLD,
  TARGET,
  TREND_STATS,
  apiHeaders,
  baseThresholds,
  intEnv,
  loadScenario,
  redirect,
  requireKey,
  runId,
  settleLoss,
  summaryFiles,
} from './lib/common.js';

export const options = {
  scenarios: { redirects: loadScenario('redirects', 32) },
  maxRedirects: 0, // k6 follows redirects by default; a 302 is the success answer here
  summaryTrendStats: TREND_STATS,
  thresholds: Object.assign(baseThresholds(), LOSS_THRESHOLD, {
    'http_req_duration{kind:redirect}': ['p(95)<250', 'p(99)<500'],
  }),
};

export function setup() {
  requireKey();
  const code = `hot-${runId()}`;
  const res = http.post(`${BASE_URL}/api/links`, JSON.stringify({ url: TARGET, code }), {
    headers: apiHeaders(),
    tags: { kind: 'setup', name: 'POST /api/links' },
  });
  if (res.status !== 201) {
    fail(`creating link ${code}: ${res.status} ${res.body}`);
  }
  // The stored, normalised URL is what Location carries.
  return { code, target: res.json('url') };
}

export function redirects(data) {
  redirect(data.code, data.target, 'redirect');
}

export default redirects; // what --vus/--duration/--iterations on the command line run

export function teardown(data) {
  settleLoss([data.code]);
}

export function handleSummary(data) {
  return summaryFiles(data, 'redirect-hot', {
    vus: intEnv('VUS', 32),
    rate: intEnv('RATE', 0),
    duration: __ENV.DURATION || '30s',
  });
}
