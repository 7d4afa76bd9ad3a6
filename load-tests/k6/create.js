// Link creation under constant load: POST /api/links alternately with a chosen code and without
// one (the server draws a random 7-character base62 code), checking the 201 and its body.
// Every creation is fsynced before its 201, so this measures the store's write path.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e API_KEY=... load-tests/k6/create.js
import http from 'k6/http';
import { check, fail } from 'k6';
import { Counter } from 'k6/metrics';

export const options = {
  vus: 8, // k6 run --vus N overrides
  duration: '30s', // k6 run --duration D overrides
  maxRedirects: 0,
  thresholds: {
    checks: ['rate==1.0'],
    http_req_failed: ['rate<0.001'],
    'http_req_duration{kind:create}': ['p(95)<1000'],
  },
};

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const API_KEY = __ENV.API_KEY || '';

const created = new Counter('linkpulse_links_created');

function apiHeaders() {
  return { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' };
}

function runId() {
  return `${__ENV.CODE_PREFIX || 'k6'}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

function endsWith(value, suffix) {
  return typeof value === 'string' && value.length >= suffix.length && value.slice(-suffix.length) === suffix;
}

export function setup() {
  if (!API_KEY) {
    fail('set the API key: k6 run -e API_KEY=<key> ...');
  }
  return { runId: runId() };
}

export default function (data) {
  const custom = __ITER % 2 === 0;
  const chosen = `c-${data.runId}-${__VU}-${__ITER}`;
  const target = `https://example.com/created/${__VU}/${__ITER}`;
  const payload = custom ? { url: target, code: chosen } : { url: target };
  const res = http.post(`${BASE_URL}/api/links`, JSON.stringify(payload), {
    headers: apiHeaders(),
    tags: { kind: 'create', name: 'POST /api/links', custom: String(custom) },
  });
  let body = {};
  try {
    body = res.json() || {};
  } catch (e) {
    body = {};
  }
  const code = body.code;
  if (res.status === 201) {
    created.add(1);
  }
  check(
    res,
    {
      'create: status is 201': (r) => r.status === 201,
      'create: Location is /api/links/{code}': (r) => r.headers.Location === `/api/links/${code}`,
      'create: code is the chosen one or 7 base62 chars': () =>
        custom ? code === chosen : typeof code === 'string' && /^[A-Za-z0-9]{7}$/.test(code),
      'create: url is the target': () => body.url === target,
      'create: shortUrl ends with /{code}': () => endsWith(body.shortUrl, `/${code}`),
      'create: statsUrl ends with /links/{code}': () => endsWith(body.statsUrl, `/links/${code}`),
      'create: clickCount is 0': () => body.clickCount === 0,
    },
    { custom: String(custom) },
  );
}
