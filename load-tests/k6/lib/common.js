// What every linkpulse k6 script shares: the env it reads, the load model (closed by default,
// open with RATE), link creation in setup(), the loss check (every 302 k6 received must be a
// click the server counted, and no more), and the end-of-run summary (text on stdout plus a
// JSON file for comparing runs). Stock k6 modules only.
import http from 'k6/http';
import { check, fail, sleep } from 'k6';
import { Counter } from 'k6/metrics';

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
export const API_KEY = __ENV.API_KEY || '';
export const TARGET = 'https://example.com/target';
// Links created per http.batch() call in setup(), and at most how many run at once.
export const BATCH = 50;
export const BATCH_PARALLEL = 25;

// A whole number from the env, or `fallback` when unset; stops the run on anything else.
export function intEnv(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') {
    return fallback;
  }
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    throw new Error(`${name} must be a whole number >= 0, got ${raw}`);
  }
  return value;
}

// The percentiles every script shows and writes (p99 and p99.9 beside the usual ones).
export const TREND_STATS = ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'p(99.9)', 'max', 'count'];

// The main scenario: `VUS` virtual users looping for `DURATION` (closed model, the default), or
// with `RATE` > 0 that many iterations per second for `DURATION` whatever the answers take (open
// model: constant-arrival-rate, at most `MAX_VUS` in flight). `exec` names the function.
export function loadScenario(exec, defaultVus) {
  const vus = intEnv('VUS', defaultVus);
  const rate = intEnv('RATE', 0);
  const duration = __ENV.DURATION || '30s';
  if (rate > 0) {
    return {
      executor: 'constant-arrival-rate',
      exec,
      rate,
      timeUnit: '1s',
      duration,
      preAllocatedVUs: vus,
      maxVUs: intEnv('MAX_VUS', vus * 4),
    };
  }
  return { executor: 'constant-vus', exec, vus, duration };
}

// Thresholds every script has: every check passes, no request fails, and with RATE no
// iteration is dropped (the rate asked for was the rate sent).
export function baseThresholds() {
  const thresholds = {
    checks: ['rate==1.0'],
    http_req_failed: ['rate==0'],
  };
  if (intEnv('RATE', 0) > 0) {
    thresholds.dropped_iterations = ['count==0'];
  }
  return thresholds;
}

export function apiHeaders() {
  return { Authorization: `Bearer ${API_KEY}`, 'Content-Type': 'application/json' };
}

// A prefix unique to this run, so runs can follow each other on one store.
export function runId() {
  return `${__ENV.CODE_PREFIX || 'k6'}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

export function requireKey() {
  if (!API_KEY) {
    fail('set the API key: k6 run -e API_KEY=<key> ...');
  }
}

// Creates a link per code (in http.batch calls of BATCH) and returns the stored target
// (normalised by the server; Location carries it). Stops the run on any answer but 201.
export function createLinks(codes) {
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
  return target;
}

// The server's clickCount of each code (read in http.batch calls), or null for a code whose
// read failed.
export function clickCounts(codes) {
  const counts = [];
  for (let i = 0; i < codes.length; i += BATCH) {
    const slice = codes.slice(i, i + BATCH);
    const responses = http.batch(
      slice.map((code) => ({
        method: 'GET',
        url: `${BASE_URL}/api/links/${code}`,
        params: { headers: apiHeaders(), tags: { kind: 'teardown', name: 'GET /api/links/{code}' } },
      })),
    );
    responses.forEach((res) => counts.push(res.status === 200 ? res.json('clickCount') : null));
  }
  return counts;
}

// `linkpulse_clicks_unaccounted`: +1 for every 302 k6 receives, and in teardown() minus the
// clicks the server counted on the run's links. Its threshold `count==0` fails a run whose
// server counted fewer clicks than it answered 302 (lost clicks) or more.
export const unaccounted = new Counter('linkpulse_clicks_unaccounted');
export const redirects302 = new Counter('linkpulse_redirects_302');
export const LOSS_THRESHOLD = { linkpulse_clicks_unaccounted: ['count==0'] };

// GET /{code} without following the redirect; counts and checks the 302 and its Location.
export function redirect(code, target, kind) {
  const res = http.get(`${BASE_URL}/${code}`, {
    redirects: 0,
    responseType: 'none',
    tags: { kind, name: 'GET /{code}' },
  });
  if (res.status === 302) {
    redirects302.add(1);
    unaccounted.add(1);
  }
  check(
    res,
    {
      [`${kind}: status is 302`]: (r) => r.status === 302,
      [`${kind}: Location is the target`]: (r) => r.headers.Location === target,
    },
    { kind },
  );
  return res;
}

// In teardown(): the clicks the server counted on `codes`, subtracted from
// linkpulse_clicks_unaccounted. The counts are read until they stop changing (a click is
// counted as its 302 is sent; reads wait for its commit), at most 5 times.
export function settleLoss(codes) {
  let total = null;
  for (let attempt = 0; attempt < 5; attempt++) {
    const counts = clickCounts(codes);
    const unread = counts.filter((c) => typeof c !== 'number').length;
    check(unread, { 'teardown: every link was read': (n) => n === 0 });
    const sum = counts.reduce((a, c) => a + (typeof c === 'number' ? c : 0), 0);
    if (sum === total) {
      break;
    }
    total = sum;
    sleep(0.2);
  }
  unaccounted.add(-total);
  console.log(
    `server counted ${total} clicks on ${codes.length} link(s); ` +
      'linkpulse_clicks_unaccounted must end at 0 (302s received minus clicks counted)',
  );
  return total;
}

function fmtValue(metric, key, value) {
  if (typeof value !== 'number') {
    return String(value);
  }
  if (metric.type === 'trend' && metric.contains === 'time' && key !== 'count') {
    return value >= 1000 ? `${(value / 1000).toFixed(2)}s` : `${value.toFixed(2)}ms`;
  }
  if (metric.type === 'rate' && key === 'rate') {
    return `${(value * 100).toFixed(2)}%`;
  }
  if (key === 'rate') {
    return `${value.toFixed(1)}/s`;
  }
  return Number.isInteger(value) ? String(value) : value.toFixed(2);
}

// The text summary: thresholds first (✓/✗), then every metric's values, one line each.
export function textSummary(data, script) {
  const lines = [`\n  ${script}: end of run`, ''];
  const names = Object.keys(data.metrics).sort();
  let crossed = 0;
  for (const name of names) {
    const metric = data.metrics[name];
    for (const [expr, result] of Object.entries(metric.thresholds || {})) {
      if (!result.ok) {
        crossed += 1;
      }
      lines.push(`  ${result.ok ? '✓' : '✗'} ${name}: ${expr}`);
    }
  }
  lines.push('');
  for (const name of names) {
    const metric = data.metrics[name];
    const order = metric.type === 'trend' ? TREND_STATS : ['count', 'rate', 'value', 'passes', 'fails', 'min', 'max'];
    const values = Object.keys(metric.values)
      .sort((a, b) => order.indexOf(a) - order.indexOf(b))
      .map((k) => `${k}=${fmtValue(metric, k, metric.values[k])}`)
      .join(' ');
    lines.push(`  ${name.padEnd(36, '.')} ${values}`);
  }
  lines.push('', crossed ? `  ${crossed} threshold(s) crossed` : '  every threshold held', '');
  return lines.join('\n');
}

// handleSummary for every script: the text summary on stdout, and k6's summary data with this
// run's parameters as JSON in `SUMMARY_JSON` (default `summary-<script>.json` in the current
// directory; `SUMMARY_JSON=none` writes none), to compare runs.
export function summaryFiles(data, script, params) {
  const out = { stdout: textSummary(data, script) };
  const path = __ENV.SUMMARY_JSON === undefined ? `summary-${script}.json` : __ENV.SUMMARY_JSON;
  if (path && path !== 'none') {
    const run = { script, baseUrl: BASE_URL, params, finishedAt: new Date().toISOString() };
    out[path] = JSON.stringify(Object.assign({ linkpulse: run }, data), null, 1);
  }
  return out;
}
