#!/usr/bin/env bash
# Failover time of the local cluster (deploy/local-cluster.sh: 3 nats-servers, nodes a, b, c
# on R3, nginx hashing on the code) when a code's home node is killed.
#
#   load-tests/failover.sh [trials] [interval-ms] [kill-after-s] [max-s]
#   load-tests/failover.sh 3 5 3 20          (the defaults)
#
# Each trial starts a fresh cluster, makes a link, clicks it once through nginx and reads its
# home node from nginx's access log (upstream= of that request). Then one python process,
# on keep-alive connections to nginx:
#   - clicks the code every [interval-ms] ms (each click waits for its answer, 2 s at most),
#   - reads the count (GET /api/links/{code} through nginx) every 20 ms on another thread,
#   - kill -9s the home node [kill-after-s] s after the first click,
#   - stops 3 s after both events below were seen, or [max-s] s after the first click.
# Reported per trial, from the kill:
#   first 302      the answer to the first click sent after the kill that was a 302
#   count grows    the answer to the first count read sent after the kill that is above the
#                  last count read before it (slowest read: the longest count read sent
#                  after the kill; the API request waits while the next node starts the
#                  code's actor, a redirect does not)
#   not 302        clicks sent after the kill answered otherwise, or failed (and how)
#   slowest        the longest click after the kill, from its sending to its answer
#   retried        requests for the code that nginx sent to more than one node (access log)
#   count check    the final count (read through nginx once it has settled) against the
#                  clicks answered 302; clicks the killed node had answered but not yet
#                  stored in JetStream are lost (default durability), and a click nginx
#                  retried after the node had counted it is counted twice
#   before/lowest  the last count read before the kill / the lowest read after it (lower
#                  than before: the killed node had shown clicks it had not stored)
# Then the cluster is stopped (KEEP=1 keeps its logs, nginx's access log included, and
# prints where). Everything is on 127.0.0.1; every loop is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

TRIALS=${1:-3}
INTERVAL_MS=${2:-5}
KILL_AFTER=${3:-3}
MAX_S=${4:-20}
BIN=$(realpath "${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}")

for tool in nginx nats-server curl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool"; exit 1; }
done
[ -x "$BIN" ] || { echo "no release binary at $BIN"; exit 1; }

TMP=$(mktemp -d /tmp/lp-failover.XXXXXX)
# shellcheck source-path=SCRIPTDIR source=cluster-lib.sh
. load-tests/cluster-lib.sh   # settled_count
CLUSTER_DIR=
cleanup() {
    if [ -n "$CLUSTER_DIR" ] && [ -d "$CLUSTER_DIR" ]; then
        deploy/local-cluster.sh down "$CLUSTER_DIR" >/dev/null 2>&1 || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then echo "logs kept under $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT

# The click loop; prints key=value lines (times in ms from the kill).
cat >"$TMP/clicker.py" <<'PY'
import http.client, json, os, signal, sys, threading, time

host, port = sys.argv[1].split(":")
code, key, pid = sys.argv[2], sys.argv[3], int(sys.argv[4])
interval, kill_after, max_s = float(sys.argv[5]) / 1000, float(sys.argv[6]), float(sys.argv[7])

def conn():
    return http.client.HTTPConnection(host, int(port), timeout=2)

state = {"kill": None, "stop": False}
reads = []  # (sent, answered, count or None)

def reader():
    c = conn()
    while not state["stop"]:
        sent = time.monotonic()
        value = None
        try:
            c.request("GET", f"/api/links/{code}", headers={"Authorization": f"Bearer {key}"})
            r = c.getresponse()
            body = r.read()
            if r.status == 200:
                value = json.loads(body)["clickCount"]
        except Exception:
            c.close()
            c = conn()
        reads.append((sent, time.monotonic(), value))
        time.sleep(0.02)

clicks = []  # (sent, answered, status or error name)
t = threading.Thread(target=reader, daemon=True)
start = time.monotonic()
t.start()
c = conn()
next_at = start
first_302 = grows = None
last_before = 0  # the last count read before the kill
seen_clicks = seen_reads = 0  # how far the lists were scanned after the kill
while True:
    now = time.monotonic()
    if now - start > max_s:
        break
    if state["kill"] is None and now - start >= kill_after:
        os.kill(pid, signal.SIGKILL)
        state["kill"] = k = time.monotonic()
        last_before = next((v for s, a, v in reversed(list(reads)) if a < k and v is not None), 0)
        seen_clicks, seen_reads = len(clicks), 0
    if state["kill"] is not None:
        while first_302 is None and seen_clicks < len(clicks):
            s, a, st = clicks[seen_clicks]
            seen_clicks += 1
            if s >= k and st == 302:
                first_302 = a
        n_reads = len(reads)
        while grows is None and seen_reads < n_reads:
            s, a, v = reads[seen_reads]
            seen_reads += 1
            if s >= k and v is not None and v > last_before:
                grows = a
        if first_302 is not None and grows is not None and now - max(first_302, grows) > 3:
            break
    sent = time.monotonic()
    try:
        c.request("GET", f"/{code}")
        r = c.getresponse()
        r.read()
        status = r.status
    except Exception as e:
        status = type(e).__name__
        c.close()
        c = conn()
    clicks.append((sent, time.monotonic(), status))
    next_at += interval
    delay = next_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    else:
        next_at = time.monotonic()
state["stop"] = True
t.join(3)

k = state["kill"]
ms = lambda x: "-" if x is None or k is None else f"{(x - k) * 1000:.0f}"
after = [(s, a, st) for s, a, st in clicks if k is not None and s >= k]
bad = {}
for s, a, st in after:
    if st != 302:
        bad[str(st)] = bad.get(str(st), 0) + 1
before = [v for s, a, v in reads if k is not None and a < k and v is not None]
post = [v for s, a, v in reads if k is not None and s >= k and v is not None]
print(f"clicks={len(clicks)}")
print(f"ok302={sum(1 for _, _, st in clicks if st == 302)}")
print(f"other={sum(1 for _, _, st in clicks if st != 302)}")
print(f"after_kill={len(after)}")
print(f"first_302_ms={ms(first_302)}")
print(f"count_grows_ms={ms(grows)}")
print("not_302_after_kill=" + (",".join(f"{n}x{st}" for st, n in sorted(bad.items())) or "0"))
print(f"slowest_after_kill_ms={max(((a - s) * 1000 for s, a, _ in after), default=0):.0f}")
print(f"count_before_kill={before[-1] if before else '-'}")
print(f"lowest_count_after_kill={min(post) if post else '-'}")
print(f"unreadable_counts_after_kill={sum(1 for s, a, v in reads if k is not None and s >= k and v is None)}")
print(f"slowest_read_after_kill_ms={max(((a - s) * 1000 for s, a, _ in reads if k is not None and s >= k), default=0):.0f}")
PY

val() { sed -n "s/^$1=//p" "$2"; }
ROWS=()
for trial in $(seq "$TRIALS"); do
    CLUSTER_DIR=$TMP/cluster-$trial
    echo "trial $trial: starting deploy/local-cluster.sh under $CLUSTER_DIR..." >&2
    LINKPULSE_BIN=$BIN deploy/local-cluster.sh up "$CLUSTER_DIR" >"$TMP/cluster.out"
    NGINX=$(sed -n 's/^nginx=//p' "$TMP/cluster.out")
    KEY=$(sed -n 's/^key=//p' "$TMP/cluster.out")
    CODE=fo$trial
    curl -sf -o /dev/null -X POST "http://$NGINX/api/links" -H "Authorization: Bearer $KEY" \
        -H 'Content-Type: application/json' -d "{\"url\":\"https://example.com/\",\"code\":\"$CODE\"}"
    curl -s -o /dev/null "http://$NGINX/$CODE"
    sleep 0.5  # nginx writes the access log line after the answer
    HOME_ADDR=$(grep -a "\"GET /$CODE HTTP" "$CLUSTER_DIR/nginx/access.log" | head -n1 |
        sed -n 's/.* upstream="\([0-9.:]*\)".*/\1/p')
    HOME_LINE=$(grep " addr=$HOME_ADDR\$" "$TMP/cluster.out" || true)
    if [ -z "$HOME_ADDR" ] || [ -z "$HOME_LINE" ]; then echo "cannot tell the home node of $CODE"; exit 1; fi
    HOME_NAME=$(sed -n 's/^node=\([a-z]*\) .*/\1/p' <<<"$HOME_LINE")
    HOME_PID=$(sed -n 's/.* pid=\([0-9]*\) .*/\1/p' <<<"$HOME_LINE")
    echo "trial $trial: code $CODE lives on node $HOME_NAME (pid $HOME_PID, $HOME_ADDR)" >&2
    timeout $((MAX_S + 30)) python3 "$TMP/clicker.py" "$NGINX" "$CODE" "$KEY" "$HOME_PID" \
        "$INTERVAL_MS" "$KILL_AFTER" "$MAX_S" >"$TMP/trial-$trial.out"
    # The final count, once the surviving nodes have stored everything.
    FINAL=$(settled_count "http://$NGINX" "$CODE" "$KEY")
    OK=$(val ok302 "$TMP/trial-$trial.out")
    # One 302 more than the loop's: the click that found the home node.
    OK=$((OK + 1))
    SLOW_READ=$(val slowest_read_after_kill_ms "$TMP/trial-$trial.out")
    RETRIED=$(grep -a "\"GET /$CODE HTTP" "$CLUSTER_DIR/nginx/access.log" | grep -c 'upstream="[^"]*, ' || true)
    ROWS+=("$trial|$HOME_NAME|$(val clicks "$TMP/trial-$trial.out")|$(val after_kill "$TMP/trial-$trial.out")|$(val first_302_ms "$TMP/trial-$trial.out")|$(val count_grows_ms "$TMP/trial-$trial.out")|$(val not_302_after_kill "$TMP/trial-$trial.out")|$(val slowest_after_kill_ms "$TMP/trial-$trial.out")|$SLOW_READ|$RETRIED|$FINAL of $OK|$(val count_before_kill "$TMP/trial-$trial.out")/$(val lowest_count_after_kill "$TMP/trial-$trial.out")")
    echo "trial $trial:" >&2
    sed 's/^/  /' "$TMP/trial-$trial.out" >&2
    deploy/local-cluster.sh down "$CLUSTER_DIR" >/dev/null 2>&1
    CLUSTER_DIR=
done

echo "clicks through nginx every $INTERVAL_MS ms, kill -9 of the code's home node $KILL_AFTER s in; times in ms from the kill"
printf '%-6s %5s %7s %11s %10s %12s %10s %8s %13s %8s %16s %14s\n' \
    trial home clicks "after kill" "first 302" "count grows" "not 302" slowest "slowest read" retried \
    "counted of 302" "before/lowest"
for row in "${ROWS[@]}"; do
    IFS='|' read -r t h n a f g b s sr r cc bl <<<"$row"
    printf '%-6s %5s %7s %11s %10s %12s %10s %8s %13s %8s %16s %14s\n' "$t" "$h" "$n" "$a" "$f" "$g" "$b" "$s" "$sr" "$r" "$cc" "$bl"
done
