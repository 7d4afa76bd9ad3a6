#!/usr/bin/env bash
# CI run of the k6 scripts, as their users run them: starts linkpulse on a free loopback port
# with a temporary data directory and only LINKPULSE_INITIAL_API_KEY set (the default limits
# must let setup() create its links), runs every stock-k6 script once at a tiny size and
# requires each to pass (exit 0). Then puts nginx in front that sends every GET /{code} on as
# a HEAD (the same 302 and Location come back, and nothing is counted) and requires the
# redirect scripts to fail (exit 99) on their loss threshold. Every step is bounded in time;
# no timing is asserted.
#
#   load-tests/k6/ci.sh path/to/linkpulse        (K6=path/to/k6 if it is not on PATH)
set -euo pipefail

SERVER=${1:?usage: ci.sh LINKPULSE_BINARY}
[ -x "$SERVER" ] || { echo "k6 ci: not an executable: $SERVER" >&2; exit 1; }
K6=${K6:-k6}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
HERE=$(cd "$(dirname "$0")" && pwd)
KEY=lp_k6_ci_key_0123456789abcdef
TMP=$(mktemp -d)
SERVER_PID=
NGINX_PID=
started=$SECONDS

cleanup() {
    for pid in "$NGINX_PID" "$SERVER_PID"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

echo "k6 ci: $("$K6" version)"

# 0 when GET $2 on port $1 answers 200 (plain bash, no curl needed).
healthy() {
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "${2:-/healthz}" >&3
    IFS= read -r -t 2 line <&3 || line=
    exec 3<&- 3>&-
    [[ "$line" == "HTTP/1.1 200"* ]]
}

# Waits up to 10 s for pid $1 to answer 200 on port $2; 1 if it died or never did.
wait_healthy() {
    for _ in $(seq 100); do
        kill -0 "$1" 2>/dev/null || return 1
        healthy "$2" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# Start the server on a random high port; try another port if that one was taken.
for _ in 1 2 3 4 5; do
    PORT=$((20000 + RANDOM % 40000))
    rm -rf "$TMP/data"
    LINKPULSE_INITIAL_API_KEY=$KEY LINKPULSE_LOG=warn "$SERVER" --listen "127.0.0.1:$PORT" \
        --data-dir "$TMP/data" >"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    wait_healthy "$SERVER_PID" "$PORT" && break
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
done
if [ -z "$SERVER_PID" ]; then
    echo "k6 ci: the server did not become healthy; its log:" >&2
    cat "$TMP/server.log" >&2
    exit 1
fi
echo "k6 ci: linkpulse (pid $SERVER_PID) on 127.0.0.1:$PORT, default limits"

# run NAME BASE_URL SCRIPT [k6 args...]: runs k6 quietly (its summary still printed), writing
# the JSON summary to $TMP/NAME.json; sets RC to k6's exit code.
run() {
    local name=$1 base=$2 script=$3
    shift 3
    echo "== k6 run $script $* (against $base)"
    RC=0
    timeout 180 "$K6" run --quiet --no-color -e BASE_URL="$base" -e API_KEY="$KEY" \
        -e SUMMARY_JSON="$TMP/$name.json" "$@" "$HERE/$script" || RC=$?
}

must_pass() {
    run "$@"
    if [ "$RC" -ne 0 ]; then
        echo "k6 ci: $3 failed (exit $RC); server log:" >&2
        tail -n 50 "$TMP/server.log" >&2
        exit 1
    fi
}

LP=http://127.0.0.1:$PORT
must_pass hot "$LP" redirect-hot.js -e VUS=4 -e DURATION=3s
must_pass hot-open "$LP" redirect-hot.js -e RATE=50 -e VUS=20 -e DURATION=3s
# 300 links in setup() with the admin key, at the default limits.
must_pass wide "$LP" redirect-wide.js -e CODES=300 -e VUS=4 -e DURATION=3s
must_pass create "$LP" create.js -e VUS=2 -e DURATION=3s
must_pass mixed "$LP" mixed.js -e CODES=50 -e VUS=4 -e DURATION=3s
must_pass mixed-open "$LP" mixed.js -e CODES=50 -e RATE=50 -e VUS=20 -e DURATION=3s
must_pass sse "$LP" sse-final-count.js -e VIEWERS=8 -e CLICKS=200 -e CLICK_VUS=4

# nginx in front, answering GET /{code} with what HEAD /{code} answers: a 302 that counts
# nothing. Its own prefix and config in $TMP; nothing under /etc or /var is used.
[ -x "$NGINX" ] || { echo "k6 ci: nginx not found (apt-get install nginx)" >&2; exit 1; }
mkdir -p "$TMP/nginx/logs"
for _ in 1 2 3 4 5; do
    NPORT=$((20000 + RANDOM % 40000))
    cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;
    upstream linkpulse { server 127.0.0.1:$PORT; keepalive 32; }
    server {
        listen 127.0.0.1:$NPORT;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        # GET /{code} goes on as HEAD: the same 302 and Location, no click counted.
        location ~ "^/[^/]+\$" {
            proxy_method HEAD;
            proxy_pass http://linkpulse;
        }
        # The API and everything else as sent.
        location / {
            proxy_pass http://linkpulse;
        }
    }
}
EOF
    "$NGINX" -p "$TMP/nginx" -e "$TMP/nginx/logs/error.log" -c "$TMP/nginx/nginx.conf" &
    NGINX_PID=$!
    wait_healthy "$NGINX_PID" "$NPORT" /healthz && break
    kill -KILL "$NGINX_PID" 2>/dev/null || true
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=
done
if [ -z "$NGINX_PID" ]; then
    echo "k6 ci: nginx did not start; its log:" >&2
    cat "$TMP/nginx/logs/error.log" >&2 || true
    exit 1
fi
echo "k6 ci: nginx (pid $NGINX_PID) on 127.0.0.1:$NPORT sends GET /{code} on as HEAD"

# must_lose NAME SCRIPT [args]: k6 must exit 99 (thresholds crossed), the loss threshold must
# be among the crossed ones, and the 302s themselves must have been right (checks and
# http_req_failed held): only the lost clicks fail the run.
must_lose() {
    local name=$1 script=$2
    shift 2
    run "$name" "http://127.0.0.1:$NPORT" "$script" "$@"
    if [ "$RC" -ne 99 ]; then
        echo "k6 ci: $script through the HEAD proxy exited $RC, expected 99 (thresholds crossed)" >&2
        exit 1
    fi
    python3 - "$TMP/$name.json" <<'EOF'
import json, sys
metrics = json.load(open(sys.argv[1]))["metrics"]
def ok(metric, expr):
    return metrics[metric]["thresholds"][expr]["ok"]
crossed = sorted(f"{m}: {e}" for m, v in metrics.items() for e, r in v.get("thresholds", {}).items() if not r["ok"])
print(f"k6 ci: crossed thresholds: {crossed}")
assert not ok("linkpulse_clicks_unaccounted", "count==0"), "the loss threshold held"
assert metrics["linkpulse_clicks_unaccounted"]["values"]["count"] > 0, "no 302 was unaccounted"
assert ok("checks", "rate==1.0"), "a check failed: the 302s themselves were wrong"
assert ok("http_req_failed", "rate==0"), "requests failed"
print(f"k6 ci: loss detected: {metrics['linkpulse_redirects_302']['values']['count']} 302s, "
      f"{metrics['linkpulse_clicks_unaccounted']['values']['count']} not counted")
EOF
}

must_lose hot-head redirect-hot.js -e VUS=4 -e DURATION=2s
must_lose wide-head redirect-wide.js -e CODES=50 -e VUS=4 -e DURATION=2s

echo "== stopping"
kill -TERM "$NGINX_PID" "$SERVER_PID"
wait "$NGINX_PID" 2>/dev/null || true
status=0
wait "$SERVER_PID" || status=$?
SERVER_PID= NGINX_PID=
if [ "$status" -ne 0 ]; then
    echo "k6 ci: linkpulse exited $status on SIGTERM; its log:" >&2
    tail -n 50 "$TMP/server.log" >&2
    exit 1
fi
echo "k6 ci: every script passed, and the redirect scripts failed on lost clicks ($((SECONDS - started)) s)"
