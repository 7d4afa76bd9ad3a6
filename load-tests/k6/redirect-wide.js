// Many short links under load: each iteration follows a code drawn at random from the CODES
// links made in setup(), so the server's link cache and per-code actors are exercised rather
// than one hot actor. The run fails unless the server counted exactly the 302s k6 received.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e API_KEY=... -e CODES=1000 load-tests/k6/redirect-wide.js
import {
  BATCH_PARALLEL,
  LOSS_THRESHOLD,
  TREND_STATS,
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

const CODES = intEnv('CODES', 1000);

export const options = {
  scenarios: { redirects: loadScenario('redirects', 32) },
  maxRedirects: 0, // k6 follows redirects by default; a 302 is the success answer here
  setupTimeout: '180s', // creating the links (each fsynced before its 201)
  teardownTimeout: '120s', // reading every link's count
  batch: BATCH_PARALLEL, // requests of one http.batch() (setup and teardown) run at once
  batchPerHost: BATCH_PARALLEL, // the same per host: there is one
  summaryTrendStats: TREND_STATS,
  thresholds: Object.assign(baseThresholds(), LOSS_THRESHOLD, {
    'http_req_duration{kind:redirect}': ['p(95)<250', 'p(99)<500'],
  }),
};

export function setup() {
  requireKey();
  if (!(CODES > 0)) {
    throw new Error(`CODES must be a positive number, got ${__ENV.CODES}`);
  }
  const id = runId();
  const codes = [];
  for (let i = 0; i < CODES; i++) {
    codes.push(`w-${id}-${i}`);
  }
  const target = createLinks(codes);
  console.log(`created ${codes.length} links (${codes[0]} .. ${codes[codes.length - 1]})`);
  return { codes, target };
}

export function redirects(data) {
  redirect(data.codes[Math.floor(Math.random() * data.codes.length)], data.target, 'redirect');
}

export default redirects; // what --vus/--duration/--iterations on the command line run

export function teardown(data) {
  settleLoss(data.codes);
}

export function handleSummary(data) {
  return summaryFiles(data, 'redirect-wide', {
    vus: intEnv('VUS', 32),
    rate: intEnv('RATE', 0),
    duration: __ENV.DURATION || '30s',
    codes: CODES,
  });
}
