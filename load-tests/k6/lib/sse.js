// What both SSE scripts share: the checks a viewer makes on the frames of GET /realtime/{code}
// (however it reads them: xk6-sse event by event, or stock k6/http as one body when the stream
// ends), and the closer that deletes the link once the clicks are over, which sends every
// open stream a last `event: deleted` frame with the final clickCount and ends it.
import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import { BASE_URL, apiHeaders, unaccounted } from './common.js';

export const frames = new Counter('linkpulse_sse_frames'); // count frames received, all viewers
export const heartbeats = new Counter('linkpulse_sse_heartbeats'); // ": keep-alive" comments
export const namedEvents = new Counter('linkpulse_sse_stats_events'); // `stats` events
export const clickToFrame = new Trend('linkpulse_sse_click_to_frame', true); // receipt - createdAt
// 1 per viewer that ended with the final count, 0 per one that did not.
export const reachedFinal = new Rate('linkpulse_sse_viewers_at_final_count');

export const SSE_THRESHOLDS = {
  linkpulse_sse_frames: ['count>0'],
  linkpulse_sse_viewers_at_final_count: ['rate==1'],
};

// The events of a whole stream body (`retry:` hints are left out).
export function parseStream(body) {
  const events = [];
  for (const block of String(body || '').split('\n\n')) {
    const event = { name: '', id: '', data: '', comment: '' };
    let any = false;
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) {
        event.comment = line.slice(1).trim();
        any = true;
      } else if (line.startsWith('id:')) {
        event.id = line.slice(3).trim();
        any = true;
      } else if (line.startsWith('event:')) {
        event.name = line.slice(6).trim();
        any = true;
      } else if (line.startsWith('data:')) {
        event.data += line.slice(5).trim();
        any = true;
      }
    }
    if (any) {
      events.push(event);
    }
  }
  return events;
}

// One viewer's view of its stream: feed it every event, then call finish().
export class StreamCheck {
  constructor() {
    this.counts = 0; // count frames seen
    this.lastId = -1;
    this.lastCount = null; // clickCount of the last count frame
    this.final = null; // clickCount of the `deleted` frame
    this.badFrames = 0;
  }

  // `event` as xk6-sse gives it ({ name, id, data, comment }); `receivedAt` (ms) when known.
  onEvent(event, receivedAt) {
    if (event.name === 'deleted') {
      let body = null;
      try {
        body = JSON.parse(event.data);
      } catch (e) {
        body = null;
      }
      this.final = body && typeof body.clickCount === 'number' ? body.clickCount : NaN;
    } else if (event.name && event.name !== 'message') {
      namedEvents.add(1); // `stats`: the link's aggregates
    } else if (event.data) {
      this.counts += 1;
      frames.add(1);
      let body = null;
      try {
        body = JSON.parse(event.data);
      } catch (e) {
        body = null;
      }
      const id = parseInt(event.id, 10);
      const count = body ? body.clickCount : undefined;
      const ok = check(
        { id, count, lastId: this.lastId },
        {
          'frame: data is JSON with a clickCount': (f) => typeof f.count === 'number',
          'frame: id equals data.clickCount': (f) => f.id === f.count,
          'frame: ids never decrease': (f) => f.id >= f.lastId,
        },
        { kind: 'sse' },
      );
      if (!ok) {
        this.badFrames += 1;
      }
      this.lastId = Math.max(this.lastId, id);
      this.lastCount = count;
      // The first frame is the state at connection time; its click may be old.
      if (receivedAt && this.counts > 1 && body && body.clickAnalytics && body.clickAnalytics.createdAt) {
        const createdAt = Date.parse(body.clickAnalytics.createdAt);
        if (!isNaN(createdAt)) {
          clickToFrame.add(receivedAt - createdAt);
        }
      }
    } else if (event.comment) {
      heartbeats.add(1);
    }
  }

  // Checks the stream ended with the deleted frame, that it carried `expected` clicks (when
  // given), and that the last count frame before it had reached the same count.
  finish(expected) {
    const final = this.final;
    const atFinal =
      this.counts > 0 &&
      typeof final === 'number' &&
      !isNaN(final) &&
      (expected === undefined || final === expected) &&
      this.lastCount === final;
    check(
      this,
      {
        'stream: delivered the initial frame': (v) => v.counts >= 1,
        'stream: ended with event: deleted carrying a clickCount': (v) =>
          typeof v.final === 'number' && !isNaN(v.final),
        'stream: the deleted frame carries the number of clicks': (v) =>
          expected === undefined || v.final === expected,
        'stream: the last count frame reached the final count': (v) => v.lastCount === v.final,
      },
      { kind: 'sse' },
    );
    reachedFinal.add(atFinal);
    if (!atFinal) {
      console.warn(
        `VU ${__VU}: ${this.counts} count frames, last count ${this.lastCount}, ` +
          `deleted frame count ${final}, expected ${expected === undefined ? '(server)' : expected}`,
      );
    }
    return atFinal;
  }
}

function readCount(code) {
  const res = http.get(`${BASE_URL}/api/links/${code}`, {
    headers: apiHeaders(),
    tags: { kind: 'closer', name: 'GET /api/links/{code}' },
  });
  return res.status === 200 ? res.json('clickCount') : null;
}

// The closer: waits until the link's count reaches `expected` (or stops changing, when
// `expected` is undefined) or `waitSeconds` pass, gives the viewers `settleSeconds` to get the
// last count frame, subtracts the server's count from linkpulse_clicks_unaccounted (the loss
// check), then deletes the link, which ends every viewer's stream.
export function closeLink(code, expected, waitSeconds, settleSeconds) {
  const deadline = Date.now() + waitSeconds * 1000;
  let count = readCount(code);
  for (;;) {
    if (Date.now() >= deadline || (expected !== undefined && count >= expected)) {
      break;
    }
    sleep(0.2);
    const next = readCount(code);
    if (expected === undefined && next === count) {
      break;
    }
    count = next;
  }
  sleep(settleSeconds);
  count = readCount(code);
  check(count, { 'closer: read the final count': (c) => typeof c === 'number' });
  unaccounted.add(-(count || 0));
  const res = http.del(`${BASE_URL}/api/links/${code}`, null, {
    headers: apiHeaders(),
    tags: { kind: 'closer', name: 'DELETE /api/links/{code}' },
  });
  check(res, { 'closer: link deleted (204)': (r) => r.status === 204 });
  console.log(`link ${code}: final clickCount ${count}${expected === undefined ? '' : ` (clicks sent: ${expected})`}; deleted`);
}
