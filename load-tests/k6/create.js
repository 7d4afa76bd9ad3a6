// Link creation under load: POST /api/links alternately with a chosen code and without one
// (the server draws a random 7-character base62 code), checking the 201 and its body. Every
// creation is fsynced before its 201, so this measures the store's write path. The admin key
// is not create-limited; a `links`-scope key would meet --create-rate-per-key.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e API_KEY=... load-tests/k6/create.js
//   k6 run -e API_KEY=... -e RATE=200 -e DURATION=20s load-tests/k6/create.js   # open model
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import {
  BASE_URL,
  TREND_STATS,
  apiHeaders,
  baseThresholds,
  intEnv,
  loadScenario,
  requireKey,
  runId,
  summaryFiles,
} from './lib/common.js';

export const options = {
  scenarios: { creates: loadScenario('creates', 8) },
  maxRedirects: 0,
  summaryTrendStats: TREND_STATS,
  thresholds: Object.assign(baseThresholds(), {
    // each creation is fsynced before its 201, so these follow the disk
    'http_req_duration{kind:create}': ['p(95)<1000', 'p(99)<2000'],
  }),
};

const created = new Counter('linkpulse_links_created');

function endsWith(value, suffix) {
  return typeof value === 'string' && value.length >= suffix.length && value.slice(-suffix.length) === suffix;
}

export function setup() {
  requireKey();
  return { runId: runId() };
}

export function creates(data) {
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

export default creates; // what --vus/--duration/--iterations on the command line run

export function handleSummary(data) {
  return summaryFiles(data, 'create', {
    vus: intEnv('VUS', 8),
    rate: intEnv('RATE', 0),
    duration: __ENV.DURATION || '30s',
  });
}
