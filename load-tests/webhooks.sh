#!/usr/bin/env bash
# What webhooks cost and how fast they drain, against a receiver that costs nothing (nginx
# answering 204 to every POST on loopback), same machine, same run:
#
# 1. Drain: a webhook made and disabled, CLICKS clicks stored over 1,000 links (the load tool
#    creates them and clicks them), then the webhook enabled: the time until every stored click
#    is delivered (read from /metrics), as clicks/s, beside the rate the server took the same
#    clicks in (the reference of the run) and the 50,000 clicks/s goal.
# 2. Redirects per second on one hot code with one active webhook (delivering every click as
#    it comes) and without (the same webhook disabled), ROUNDS rounds, each measuring both in
#    turn (which one first alternates): the median of with/without.
#
#   load-tests/webhooks.sh [clicks=1000000] [batch=1000] [rounds=3] [seconds=10] [connections=64]
#
# Needs: wrk, nginx, curl, python3 and a release build of the workspace
# (cargo build --release --workspace: linkpulse and linkpulse-load). Listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

CLICKS=${1:-1000000}
BATCH=${2:-1000}
ROUNDS=${3:-3}
SECONDS_EACH=${4:-10}
CONNS=${5:-64}
BIN=${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}
LOAD=${LOAD_BIN:-$(dirname "$BIN")/linkpulse-load}
KEY=lp_webhooks_key_0123456789abcdef

for tool in wrk nginx curl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk nginx curl)"; exit 1; }
done
[ -x "$BIN" ] || { echo "no release binary at $BIN (cargo build --release)"; exit 1; }
[ -x "$LOAD" ] || { echo "no load tool at $LOAD (cargo build --release -p linkpulse-load)"; exit 1; }

TMP=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RECEIVER_PORT=$(free_port)
LP_PORT=$(free_port)
cleanup() {
    [ -n "${LP_PID:-}" ] && kill "$LP_PID" 2>/dev/null && wait "$LP_PID" 2>/dev/null
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

cat > "$TMP/nginx.conf" <<NGINX
worker_processes 1;
daemon on;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP;
    client_max_body_size 64m;
    server {
        listen 127.0.0.1:$RECEIVER_PORT;
        location / { return 204; }
    }
}
NGINX
nginx -c "$TMP/nginx.conf" -p "$TMP"

LINKPULSE_CREATE_RATE_PER_KEY=0 LINKPULSE_CREATE_RATE_PER_IP=0 LINKPULSE_INITIAL_API_KEY=$KEY \
LINKPULSE_LOG=warn "$BIN" --listen "127.0.0.1:$LP_PORT" --data-dir "$TMP/data" \
    --webhook-allow-private --webhook-batch "$BATCH" >"$TMP/lp.log" 2>&1 &
LP_PID=$!
BASE="http://127.0.0.1:$LP_PORT"
for _ in $(seq 100); do curl -sf "$BASE/healthz" >/dev/null && break; sleep 0.1; done

api() { # method path [body]
    curl -sf -X "$1" "$BASE$2" -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' ${3:+-d "$3"}
}
metric() { curl -sf "$BASE/metrics" | awk -v n="$1" '$1 == n {print $2}'; }
now() { python3 -c 'import time; print(time.time())'; }

HOOK=$(api POST /api/webhooks "{\"url\":\"http://127.0.0.1:$RECEIVER_PORT/hook\",\"events\":[\"link.clicked\"]}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
api PATCH "/api/webhooks/$HOOK" '{"enabled":false}' >/dev/null

echo "== drain: $CLICKS clicks over 1,000 links, batches of up to $BATCH"
"$LOAD" --base-url "$BASE" --key "$KEY" redirect --requests "$CLICKS" --codes 1000 \
    --connections "$CONNS" --prefix d > "$TMP/fill.txt"
INTAKE=$(awk -F': *' '/^throughput/ {print $2+0}' "$TMP/fill.txt")
STORED=$("$LOAD" --base-url "$BASE" --key "$KEY" counts --codes 1000 --prefix d | awk -F': *' '/^sum/ {print $2+0}')
echo "stored: $STORED clicks, taken in at $INTAKE redirects/s"
before=$(metric linkpulse_webhook_clicks_total)
start=$(now)
api PATCH "/api/webhooks/$HOOK" '{"enabled":true}' >/dev/null
while :; do
    sent=$(metric linkpulse_webhook_clicks_total)
    [ "$((sent - before))" -ge "$STORED" ] && break
    sleep 0.05
done
took=$(python3 -c "print(f'{$(now) - $start:.2f}')")
messages=$(metric linkpulse_webhook_messages_total)
python3 - "$STORED" "$took" "$INTAKE" "$messages" <<'PY'
import sys
stored, took, intake, messages = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rate = stored / took
print(f"drained: {stored} clicks in {took:.2f} s = {rate:,.0f} clicks/s in {messages} messages")
print(f"drain / intake (the server's own redirect rate this run): {rate / intake:.2f}")
print(f"drain / 50,000 clicks/s goal: {rate / 50000:.2f}")
PY

echo "== redirects on one hot code, with one active webhook and without ($ROUNDS rounds of ${SECONDS_EACH}s)"
api POST /api/links '{"url":"https://example.com/target","code":"hot"}' >/dev/null
rps() { wrk -t1 -c"$CONNS" -d"${SECONDS_EACH}s" "$BASE/hot" | awk '/Requests\/sec/ {print $2}'; }
ratios=()
printf "%-6s %12s %12s %8s\n" round without with with/wo
measure() { # enabled -> requests/s
    api PATCH "/api/webhooks/$HOOK" "{\"enabled\":$1}" >/dev/null
    rps
}
wrk -t1 -c"$CONNS" -d2s "$BASE/hot" >/dev/null   # warm-up, not measured
for r in $(seq "$ROUNDS"); do
    # Alternate which goes first, so a trend of the machine favours neither.
    if [ $((r % 2)) = 1 ]; then
        without=$(measure false); with=$(measure true)
    else
        with=$(measure true); without=$(measure false)
    fi
    ratio=$(python3 -c "print(f'{$with/$without:.2f}')")
    ratios+=("$ratio")
    printf "%-6s %12s %12s %8s\n" "$r" "$without" "$with" "$ratio"
done
python3 -c "import statistics,sys; print('median with/without:', statistics.median(map(float, sys.argv[1:])))" "${ratios[@]}"
# Every click of the hot runs reached the receiver too (read from the metrics).
sleep 2
echo "webhook clicks delivered in all: $(metric linkpulse_webhook_clicks_total); failures: $(metric linkpulse_webhook_failures_total)"
