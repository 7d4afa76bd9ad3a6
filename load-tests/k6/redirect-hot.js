// One hot short link under constant load: how fast GET /{code} answers its 302, and whether the
// server counted exactly the redirects k6 received.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e API_KEY=... load-tests/k6/redirect-hot.js
//
// setup() creates one link with a code unique to this run; every iteration follows it once
// (redirects: 0, so the 302 itself is the answer measured); teardown() reads the link's
// clickCount and logs it, to compare with the linkpulse_redirects_302 counter in the summary.
import http from 'k6/http';
import { check, fail, sleep } from 'k6';
import { Counter } from 'k6/metrics';

export const options = {
  vus: 32, // k6 run --vus N overrides
  duration: '30s', // k6 run --duration D overrides
  maxRedirects: 0, // k6 follows redirects by default; a 302 is the success answer here
  thresholds: {
    checks: ['rate==1.0'],
    http_req_failed: ['rate<0.001'],
    'http_req_duration{kind:redirect}': ['p(95)<250'],
  },
};

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const API_KEY = __ENV.API_KEY || '';
const TARGET = 'https://example.com/target';

const redirects302 = new Counter('linkpulse_redirects_302');

function apiHeaders() {
  return { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' };
}

function runId() {
  return `${__ENV.CODE_PREFIX || 'k6'}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

export function setup() {
  if (!API_KEY) {
    fail('set the API key: k6 run -e API_KEY=<key> ...');
  }
  const code = `hot-${runId()}`;
  const res = http.post(`${BASE_URL}/api/links`, JSON.stringify({ url: TARGET, code }), {
    headers: apiHeaders(),
    tags: { kind: 'setup' },
  });
  if (res.status !== 201) {
    fail(`creating link ${code}: ${res.status} ${res.body}`);
  }
  // The stored, normalised URL is what Location carries.
  return { code, target: res.json('url') };
}

export default function (data) {
  const res = http.get(`${BASE_URL}/${data.code}`, {
    redirects: 0,
    responseType: 'none',
    tags: { kind: 'redirect', name: 'GET /{code}' },
  });
  if (res.status === 302) {
    redirects302.add(1);
  }
  check(res, {
    'redirect: status is 302': (r) => r.status === 302,
    'redirect: Location is the target': (r) => r.headers.Location === data.target,
  });
}

export function teardown(data) {
  sleep(1); // clicks are counted by the link's actor just after the 302; let it catch up
  const res = http.get(`${BASE_URL}/api/links/${data.code}`, {
    headers: apiHeaders(),
    tags: { kind: 'read', name: 'GET /api/links/{code}' },
  });
  check(res, { 'teardown: read link status is 200': (r) => r.status === 200 });
  const count = res.status === 200 ? res.json('clickCount') : 'unknown';
  console.log(
    `link ${data.code}: server clickCount=${count}; ` +
      'compare with linkpulse_redirects_302 in the summary below (the 302s k6 received)',
  );
}
