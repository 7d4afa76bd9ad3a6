#!/usr/bin/env bash
# CI smoke test of the load tool: starts linkpulse on a free loopback port with a temporary data
# directory, runs each linkpulse-load mode once at a tiny size, stops the server with SIGTERM and
# checks that it exited 0. No timing is asserted; every step is bounded in time.
#
#   load-tests/smoke.sh path/to/linkpulse path/to/linkpulse-load
set -euo pipefail

SERVER=${1:?usage: smoke.sh LINKPULSE_BINARY LINKPULSE_LOAD_BINARY}
LOAD=${2:?usage: smoke.sh LINKPULSE_BINARY LINKPULSE_LOAD_BINARY}
for bin in "$SERVER" "$LOAD"; do
    [ -x "$bin" ] || { echo "smoke: not an executable: $bin" >&2; exit 1; }
done

KEY=lp_smoke_key_0123456789abcdef
TMP=$(mktemp -d)
SERVER_PID=

cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

# 0 when GET /healthz on the port answers 200 (plain bash, no curl needed).
healthy() {
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    printf 'GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
    IFS= read -r -t 2 line <&3 || line=
    exec 3<&- 3>&-
    [[ "$line" == "HTTP/1.1 200"* ]]
}

# Start the server on a random high port; try another port if that one was taken.
for _ in 1 2 3 4 5; do
    PORT=$((20000 + RANDOM % 40000))
    rm -rf "$TMP/data"
    # Load runs create links far faster than the default per-key and per-address limits allow.
    LINKPULSE_CREATE_RATE_PER_KEY=0 LINKPULSE_CREATE_RATE_PER_IP=0 \
    LINKPULSE_INITIAL_API_KEY=$KEY LINKPULSE_LOG=warn "$SERVER" --listen "127.0.0.1:$PORT" \
        --data-dir "$TMP/data" >"$TMP/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        healthy "$PORT" 2>/dev/null && break
        sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null && healthy "$PORT" 2>/dev/null; then
        break
    fi
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
done
if [ -z "$SERVER_PID" ]; then
    echo "smoke: the server did not become healthy; its log:" >&2
    cat "$TMP/server.log" >&2
    exit 1
fi
echo "smoke: linkpulse (pid $SERVER_PID) on 127.0.0.1:$PORT"

run() {
    echo "== linkpulse-load $*"
    if ! LINKPULSE_API_KEY=$KEY timeout 120 "$LOAD" --base-url "http://127.0.0.1:$PORT" \
        --server-pid "$SERVER_PID" "$@"; then
        echo "smoke: linkpulse-load $1 failed; server log:" >&2
        tail -n 50 "$TMP/server.log" >&2
        exit 1
    fi
}

run redirect --requests 2000 --connections 8 --codes 3
run redirect --requests 500 --connections 4 --codes 3 --rate 1000 --pick random
run fanout --subscribers 20 --links 2 --clicks 20 --rate 50
run fanout --subscribers 20 --links 2 --clicks 20 --rate 50 --prefix v \
    --click-url "http://127.0.0.1:$PORT" --viewer-urls "http://127.0.0.1:$PORT,http://127.0.0.1:$PORT"
run create --codes 50 --prefix w
run counts --codes 50 --prefix w
run distinct --codes 200 --concurrency 8

echo "== stopping linkpulse with SIGTERM"
kill -TERM "$SERVER_PID"
for _ in $(seq 300); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "smoke: the server did not stop within 30 s of SIGTERM" >&2
    exit 1
fi
status=0
wait "$SERVER_PID" || status=$?
SERVER_PID=
if [ "$status" -ne 0 ]; then
    echo "smoke: the server exited with status $status; its log:" >&2
    tail -n 50 "$TMP/server.log" >&2
    exit 1
fi

echo "== linkpulse-load seed + restart (a small store written directly, then two starts)"
timeout 120 "$LOAD" seed --data-dir "$TMP/seeded" --events 2000 --codes 10
timeout 120 "$LOAD" restart --bin "$SERVER" --data-dir "$TMP/seeded" --codes 10 --per-code 200 --rounds 2
echo "smoke: ok"
