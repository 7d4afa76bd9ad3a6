#!/usr/bin/env bash
# Where a redirect's time goes: the release server pinned to cpu 0 (taskset), wrk pinned to
# cpu 1, `perf record --call-graph dwarf` of the server alone while wrk runs, then the samples
# sorted into areas by load-tests/perf-areas.py.
#
#   load-tests/profile.sh <head|hot|wide|strict> [seconds] [codes]
#
# LINKPULSE_BIN picks the binary (default: the release build); the perf data stays in
# $PROFILE_OUT (default /tmp/linkpulse-profile-<mode>.data) for `perf report`.
# Needs perf, wrk, taskset, curl and a release build with debug info (the release profile
# keeps `debug = 1`).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:?head, hot, wide or strict}
SECS=${2:-5}
NCODES=${3:-10000}
BIN=${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}
LOAD=${LINKPULSE_LOAD:-$(dirname "$BIN")/linkpulse-load}
OUT=${PROFILE_OUT:-/tmp/linkpulse-profile-$MODE.data}
KEY=lp_profile_key_0123456789abcdef
TMP=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
    [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null && for _ in $(seq 150); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    rm -rf "$TMP"
}
trap cleanup EXIT
DURABILITY=default
[ "$MODE" = strict ] && DURABILITY=strict
LINKPULSE_CREATE_RATE_PER_KEY=0 LINKPULSE_CREATE_RATE_PER_IP=0 LINKPULSE_MAX_CONNECTIONS_PER_CLIENT=0 \
LINKPULSE_INITIAL_API_KEY=$KEY LINKPULSE_LOG=warn taskset -c 0 "$BIN" --listen "127.0.0.1:$PORT" \
    --data-dir "$TMP/data" --durability "$DURABILITY" >"$TMP/log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
# The links (r0000001...) are made, and every code clicked once, by the load tool.
n=1; [ "$MODE" = wide ] && n=$NCODES
LINKPULSE_API_KEY=$KEY taskset -c 1 "$LOAD" --base-url "http://127.0.0.1:$PORT" redirect \
    --requests "$n" --connections 16 --codes "$n" >/dev/null
seq -f "r%07g" 1 "$NCODES" > "$TMP/codes"
url="http://127.0.0.1:$PORT/r0000001"
script=()
case $MODE in
    head) script=(-s load-tests/wrk-head.lua) ;;
    wide) url="http://127.0.0.1:$PORT/"; script=(-s load-tests/wrk-codes.lua) ;;
esac
CODES="$TMP/codes" taskset -c 1 wrk -t1 -c64 -d"$((SECS + 3))s" "${script[@]}" "$url" > "$TMP/wrk" &
WRK=$!
sleep 1.5
perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$PID" -o "$OUT" -- sleep "$SECS" 2>/dev/null
wait "$WRK"
grep -E "Requests/sec|Non-2xx|Socket errors" "$TMP/wrk"
python3 load-tests/perf-areas.py "$OUT"
