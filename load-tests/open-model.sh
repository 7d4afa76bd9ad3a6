#!/usr/bin/env bash
# Redirect latency under an open model at half the maximum rate, the server on cpu 0 and the
# load tool on cpu 1 (taskset), so neither steals the other's core:
#
#   load-tests/open-model.sh [rounds] [seconds] [codes]
#
# Each round first measures the maximum (closed model, 64 connections, [codes] codes at random,
# 8 s), then sends half of it for [seconds] with `linkpulse-load redirect --rate` (latency from
# each request's scheduled time) and prints p50, p99, p99.9 and max beside the load tool's own
# pacer lateness (how late it handed requests out: included in the latencies, so a figure is
# only as good as the tool's own). With B_ARGS set (server flags, for example
# B_ARGS="--background-nice 0"), each round also measures a second server started with them,
# at the same rate (its own maximum is printed too), right after the first: a setting measured against the default in the same
# minutes. Every run checks that each 302 was counted.
#
# Needs: taskset (util-linux), two cpus, and a release build of the workspace (linkpulse and
# linkpulse-load). Everything listens on 127.0.0.1; every run is bounded by its duration.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-2}
SECONDS_EACH=${2:-15}
NCODES=${3:-10000}
BIN=$(realpath "${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}")
LOAD=$(realpath "${LINKPULSE_LOAD_BIN:-$(dirname "$BIN")/linkpulse-load}")
B_ARGS=${B_ARGS:-}
KEY=lp_open_model_key_0123456789abcdef
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
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts a server on cpu 0 with the given flags; prints "PORT PID".
start() {
    local port dir
    port=$(free_port)
    dir=$(mktemp -d -p "$TMP")
    # shellcheck disable=SC2086 # the flags are words
    LINKPULSE_INITIAL_API_KEY=$KEY LINKPULSE_CREATE_RATE_PER_KEY=0 LINKPULSE_MAX_CONNECTIONS_PER_CLIENT=0 \
        taskset -c 0 "$BIN" --listen "127.0.0.1:$port" --data-dir "$dir" "$@" >"$dir.log" 2>&1 &
    local pid=$!
    for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && break; sleep 0.05; done
    echo "$port $pid"
}

A=($(start)); PIDS+=("${A[1]}")
if [ -n "$B_ARGS" ]; then
    # shellcheck disable=SC2086
    B=($(start $B_ARGS)); PIDS+=("${B[1]}")
fi

load() { # port pid args...
    local port=$1 pid=$2
    shift 2
    taskset -c 1 "$LOAD" --base-url "http://127.0.0.1:$port" --key "$KEY" --server-pid "$pid" \
        redirect --connections 64 --codes "$NCODES" --pick random "$@"
}
field() { awk -v k="$1" -F': *' '$1 == k {print $2}'; }

# Both servers made their links and started their actors before anything is measured.
load "${A[0]}" "${A[1]}" --requests 100000000 --duration 8 >/dev/null
if [ -n "$B_ARGS" ]; then load "${B[0]}" "${B[1]}" --requests 100000000 --duration 8 >/dev/null; fi

printf '%-6s %-8s %10s %10s %10s %10s %10s  %s\n' round server max rate p50 p99 p99.9 "max latency, pacer lateness p99 / max"
for round in $(seq "$ROUNDS"); do
    max=$(load "${A[0]}" "${A[1]}" --requests 100000000 --duration 8 | tee "$TMP/max.txt" | field throughput)
    grep -q '^count check: *ok' "$TMP/max.txt" || { cat "$TMP/max.txt"; exit 1; }
    max=${max%/s}
    rate=$((max / 2))
    for which in A B; do
        [ "$which" = B ] && [ -z "$B_ARGS" ] && continue
        if [ "$which" = A ]; then s=("${A[@]}"); else s=("${B[@]}"); fi
        if [ "$which" = B ]; then
            max=$(load "${B[0]}" "${B[1]}" --requests 100000000 --duration 8 | field throughput)
            max=${max%/s}
        fi
        load "${s[0]}" "${s[1]}" --rate "$rate" --requests $((rate * SECONDS_EACH)) \
            --duration $((SECONDS_EACH + 5)) >"$TMP/run.txt"
        grep -q '^count check: *ok' "$TMP/run.txt" || { cat "$TMP/run.txt"; exit 1; }
        printf '%-6s %-8s %10s %10s %10s %10s %10s  %s, %s\n' "$round" "$which" "$max/s" "$rate/s" \
            "$(field 'latency p50' <"$TMP/run.txt")" "$(field 'latency p99' <"$TMP/run.txt")" \
            "$(field 'latency p99.9' <"$TMP/run.txt")" "$(field 'latency max' <"$TMP/run.txt")" \
            "$(field 'pacer lateness' <"$TMP/run.txt" | sed 's/ (.*//')"
    done
done
echo "A: $BIN (default flags); B: ${B_ARGS:-none}. max: closed model, 64 connections; rate: half of A's."
