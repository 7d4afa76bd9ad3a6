// A mixed workload by weighted choice: about 90% redirects over CODES links made in setup(),
// 5% link creations, 5% reads of GET /api/links/{code}. Each request is tagged kind:redirect,
// kind:create or kind:read, with a latency threshold per kind.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e API_KEY=... -e CODES=200 load-tests/k6/mixed.js
import http from 'k6/http';
import { check, fail } from 'k6';
import { Counter } from 'k6/metrics';

export const options = {
  vus: 32, // k6 run --vus N overrides
  duration: '30s', // k6 run --duration D overrides
  maxRedirects: 0, // k6 follows redirects by default; a 302 is the success answer here
  setupTimeout: '120s',
  batchPerHost: 25,
  thresholds: {
    checks: ['rate==1.0'],
    http_req_failed: ['rate<0.001'],
    'http_req_duration{kind:redirect}': ['p(95)<250'],
    'http_req_duration{kind:create}': ['p(95)<1000'],
    'http_req_duration{kind:read}': ['p(95)<500'],
  },
};

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const API_KEY = __ENV.API_KEY || '';
const CODES = parseInt(__ENV.CODES || '200', 10);
const BATCH = 50;
const TARGET = 'https://example.com/target';
const REDIRECT_SHARE = 0.9;
const CREATE_SHARE = 0.05; // the rest (about 0.05) are reads

const redirects302 = new Counter('linkpulse_redirects_302');
const created = new Counter('linkpulse_links_created');
const reads = new Counter('linkpulse_links_read');

function apiHeaders() {
  return { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' };
}

function runId() {
  return `${__ENV.CODE_PREFIX || 'k6'}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
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
    codes.push(`m-${id}-${i}`);
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
      target = res.json('url');
    });
  }
  return { runId: id, codes, target };
}

function redirect(data) {
  const res = http.get(`${BASE_URL}/${pick(data.codes)}`, {
    redirects: 0,
    responseType: 'none',
    tags: { kind: 'redirect', name: 'GET /{code}' },
  });
  if (res.status === 302) {
    redirects302.add(1);
  }
  check(
    res,
    {
      'redirect: status is 302': (r) => r.status === 302,
      'redirect: Location is the target': (r) => r.headers.Location === data.target,
    },
    { kind: 'redirect' },
  );
}

function create(data) {
  const custom = __ITER % 2 === 0;
  const chosen = `mc-${data.runId}-${__VU}-${__ITER}`;
  const payload = custom ? { url: TARGET, code: chosen } : { url: TARGET };
  const res = http.post(`${BASE_URL}/api/links`, JSON.stringify(payload), {
    headers: apiHeaders(),
    tags: { kind: 'create', name: 'POST /api/links' },
  });
  let body = {};
  try {
    body = res.json() || {};
  } catch (e) {
    body = {};
  }
  if (res.status === 201) {
    created.add(1);
  }
  check(
    res,
    {
      'create: status is 201': (r) => r.status === 201,
      'create: code is the chosen one or 7 base62 chars': () =>
        custom ? body.code === chosen : typeof body.code === 'string' && /^[A-Za-z0-9]{7}$/.test(body.code),
      'create: clickCount is 0': () => body.clickCount === 0,
    },
    { kind: 'create' },
  );
}

function read(data) {
  const code = pick(data.codes);
  const res = http.get(`${BASE_URL}/api/links/${code}`, {
    headers: apiHeaders(),
    tags: { kind: 'read', name: 'GET /api/links/{code}' },
  });
  let body = {};
  try {
    body = res.json() || {};
  } catch (e) {
    body = {};
  }
  if (res.status === 200) {
    reads.add(1);
  }
  check(
    res,
    {
      'read: status is 200': (r) => r.status === 200,
      'read: code matches': () => body.code === code,
      'read: clickCount is a number': () => typeof body.clickCount === 'number' && body.clickCount >= 0,
    },
    { kind: 'read' },
  );
}

export default function (data) {
  const roll = Math.random();
  if (roll < REDIRECT_SHARE) {
    redirect(data);
  } else if (roll < REDIRECT_SHARE + CREATE_SHARE) {
    create(data);
  } else {
    read(data);
  }
}
