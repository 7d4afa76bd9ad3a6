// Many short links under constant load: each iteration follows a code drawn at random from the
// CODES links made in setup(), so the server's link cache and per-code actors are exercised
// rather than one hot actor.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e API_KEY=... -e CODES=1000 load-tests/k6/redirect-wide.js
import http from 'k6/http';
import { check, fail } from 'k6';
import { Counter } from 'k6/metrics';

export const options = {
  vus: 32, // k6 run --vus N overrides
  duration: '30s', // k6 run --duration D overrides
  maxRedirects: 0, // k6 follows redirects by default; a 302 is the success answer here
  setupTimeout: '180s', // creating the links (each fsynced before its 201)
  batchPerHost: 25, // parallel requests of one http.batch() in setup
  thresholds: {
    checks: ['rate==1.0'],
    http_req_failed: ['rate<0.001'],
    'http_req_duration{kind:redirect}': ['p(95)<250'],
  },
};

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const API_KEY = __ENV.API_KEY || '';
const CODES = parseInt(__ENV.CODES || '1000', 10);
const BATCH = 50;
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
  if (!(CODES > 0)) {
    fail(`CODES must be a positive number, got ${__ENV.CODES}`);
  }
  const id = runId();
  const codes = [];
  for (let i = 0; i < CODES; i++) {
    codes.push(`w-${id}-${i}`);
  }
  let target = TARGET;
  for (let i = 0; i < codes.length; i += BATCH) {
    const slice = codes.slice(i, i + BATCH);
    const responses = http.batch(
      slice.map((code) => ({
        method: 'POST',
        url: `${BASE_URL}/api/links`,
        body: JSON.stringify({ url: TARGET, code }),
        params: { headers: apiHeaders(), tags: { kind: 'setup', name: 'POST /api/links' } },
      })),
    );
    responses.forEach((res, j) => {
      if (res.status !== 201) {
        fail(`creating link ${slice[j]}: ${res.status} ${res.body}`);
      }
      target = res.json('url'); // the stored, normalised URL is what Location carries
    });
  }
  console.log(`created ${codes.length} links (${codes[0]} .. ${codes[codes.length - 1]})`);
  return { codes, target };
}

export default function (data) {
  const code = data.codes[Math.floor(Math.random() * data.codes.length)];
  const res = http.get(`${BASE_URL}/${code}`, {
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
