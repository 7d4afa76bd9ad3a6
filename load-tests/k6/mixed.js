// A mixed workload by weighted choice: about 90% redirects over CODES links made in setup(),
// 5% link creations, 5% reads of GET /api/links/{code}. Each request is tagged kind:redirect,
// kind:create or kind:read, with latency thresholds per kind; the run fails unless the server
// counted exactly the 302s k6 received on the setup() links.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e API_KEY=... -e CODES=200 load-tests/k6/mixed.js
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import {
  BASE_URL,
  BATCH_PARALLEL,
  LOSS_THRESHOLD,
  TARGET,
  TREND_STATS,
  apiHeaders,
  baseThresholds,
  createLinks,
  intEnv,
  loadScenario,
  redirect,
  requireKey,
  runId,
  settleLoss,
  summaryFiles,
} from './lib/common.js';

const CODES = intEnv('CODES', 200);
const REDIRECT_SHARE = 0.9;
const CREATE_SHARE = 0.05; // the rest (about 0.05) are reads

export const options = {
  scenarios: { mixed: loadScenario('mixed', 32) },
  maxRedirects: 0, // k6 follows redirects by default; a 302 is the success answer here
  setupTimeout: '120s',
  teardownTimeout: '120s',
  batch: BATCH_PARALLEL, // requests of one http.batch() (setup and teardown) run at once
  batchPerHost: BATCH_PARALLEL,
  summaryTrendStats: TREND_STATS,
  thresholds: Object.assign(baseThresholds(), LOSS_THRESHOLD, {
    'http_req_duration{kind:redirect}': ['p(95)<250', 'p(99)<500'],
    'http_req_duration{kind:create}': ['p(95)<1000', 'p(99)<2000'],
    'http_req_duration{kind:read}': ['p(95)<500', 'p(99)<1000'],
  }),
};

const created = new Counter('linkpulse_links_created');
const reads = new Counter('linkpulse_links_read');

function pick(list) {
  return list[Math.floor(Math.random() * list.length)];
}

export function setup() {
  requireKey();
  if (!(CODES > 0)) {
    throw new Error(`CODES must be a positive number, got ${__ENV.CODES}`);
  }
  const id = runId();
  const codes = [];
  for (let i = 0; i < CODES; i++) {
    codes.push(`m-${id}-${i}`);
  }
  return { runId: id, codes, target: createLinks(codes) };
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

export function mixed(data) {
  const roll = Math.random();
  if (roll < REDIRECT_SHARE) {
    redirect(pick(data.codes), data.target, 'redirect');
  } else if (roll < REDIRECT_SHARE + CREATE_SHARE) {
    create(data);
  } else {
    read(data);
  }
}

export default mixed; // what --vus/--duration/--iterations on the command line run

export function teardown(data) {
  settleLoss(data.codes);
}

export function handleSummary(data) {
  return summaryFiles(data, 'mixed', {
    vus: intEnv('VUS', 32),
    rate: intEnv('RATE', 0),
    duration: __ENV.DURATION || '30s',
    codes: CODES,
  });
}
