#!/usr/bin/env bash
# What the workspace feed (`GET /api/events`, which the home page watches) costs while the
# workspace takes clicks at a fixed rate: the frames and bytes a watcher receives a second, and
# the server's CPU beside the same clicks with nobody watching, in the same run.
#
#   load-tests/events-cost.sh [rounds] [seconds] [rate] [codes] [watchers]
#
# Each round sends [rate] clicks a second over [codes] links for [seconds] (linkpulse-load's
# open model, the server on cpu 0 and the load tool on cpu 1), three times: with nobody
# watching (the reference), with one watcher (a dashboard), and with [watchers] watchers. It
# prints the server's CPU (percent of one core) in each, the ratio to the reference, and per
# watcher the `counts` frames and bytes a second and the largest frame. Every run checks that
# each 302 was counted.
#
# Needs: taskset, curl, two cpus, a release build of the workspace (linkpulse and
# linkpulse-load). Everything listens on 127.0.0.1; every run is bounded by its duration.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-2}
SECONDS_EACH=${2:-10}
RATE=${3:-10000}
NCODES=${4:-1000}
WATCHERS=${5:-50}
BIN=$(realpath "${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}")
LOAD=$(realpath "${LINKPULSE_LOAD_BIN:-$(dirname "$BIN")/linkpulse-load}")
KEY=lp_events_cost_key_0123456789abcdef
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT
[ -x "$BIN" ] || { echo "no release binary at $BIN (cargo build --release)"; exit 1; }
[ -x "$LOAD" ] || { echo "no linkpulse-load at $LOAD (cargo build --release --workspace)"; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "needs two cpus"; exit 1; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LINKPULSE_INITIAL_API_KEY=$KEY LINKPULSE_CREATE_RATE_PER_KEY=0 LINKPULSE_MAX_CONNECTIONS_PER_CLIENT=0 \
    taskset -c 0 "$BIN" --listen "127.0.0.1:$port" --data-dir "$TMP/data" >"$TMP/server.log" 2>&1 &
server=$!
PIDS+=("$server")
for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.05; done

load() {
    taskset -c 1 "$LOAD" --base-url "http://127.0.0.1:$port" --key "$KEY" --server-pid "$server" \
        redirect --connections 64 --codes "$NCODES" --pick random "$@"
}
# Server CPU time in clock ticks (user + system).
ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
hz=$(getconf CLK_TCK)

# The links are made and their actors started before anything is measured.
load --requests 100000000 --duration 5 >/dev/null

# One run at the rate with `n` watchers: "cpu% frames/s bytes/s max-frame-bytes".
run() {
    local n=$1 i before after
    local watchers=()
    for i in $(seq "$n"); do
        curl -sN -H "Authorization: Bearer $KEY" "http://127.0.0.1:$port/api/events" \
            >"$TMP/w$i.txt" 2>/dev/null &
        watchers+=($!)
    done
    sleep 1
    before=$(ticks)
    load --rate "$RATE" --requests $((RATE * SECONDS_EACH)) --duration $((SECONDS_EACH + 5)) >"$TMP/run.txt"
    after=$(ticks)
    grep -q '^count check: *ok' "$TMP/run.txt" || { cat "$TMP/run.txt"; exit 1; }
    local took
    took=$(awk -F': *' '$1 == "duration" {print $2 + 0}' "$TMP/run.txt")
    [ -n "$took" ] || took=$SECONDS_EACH
    sleep 1
    for pid in "${watchers[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    local frames=0 bytes=0 biggest=0
    if [ "$n" -gt 0 ]; then
        frames=$(grep -c '^event: counts' "$TMP/w1.txt" || true)
        bytes=$(wc -c <"$TMP/w1.txt")
        biggest=$(awk '/^data: /{ if (length($0) > m) m = length($0) } END { print m + 0 }' "$TMP/w1.txt")
    fi
    awk -v b="$before" -v a="$after" -v hz="$hz" -v t="$took" -v f="$frames" -v by="$bytes" -v m="$biggest" \
        'BEGIN { printf "%.1f %.2f %.0f %d\n", (a - b) / hz / t * 100, f / t, by / t, m }'
}

printf '%-6s %-10s %9s %8s %12s %12s %14s\n' round watchers "cpu%" ratio "frames/s" "bytes/s" "largest frame"
for round in $(seq "$ROUNDS"); do
    read -r ref_cpu _ _ _ <<<"$(run 0)"
    printf '%-6s %-10s %9s %8s %12s %12s %14s\n' "$round" 0 "$ref_cpu" 1.00 - - -
    for n in 1 "$WATCHERS"; do
        read -r cpu frames bytes biggest <<<"$(run "$n")"
        ratio=$(awk -v c="$cpu" -v r="$ref_cpu" 'BEGIN { printf "%.2f", c / r }')
        printf '%-6s %-10s %9s %8s %12s %12s %14s\n' "$round" "$n" "$cpu" "$ratio" "$frames" "$bytes" "$biggest B"
    done
done
echo "rate: $RATE clicks/s over $NCODES links for ${SECONDS_EACH}s per run; frames and bytes: per watcher"
