#!/usr/bin/env bash
# What serving redirects without salvo could give at best: nginx answering a fixed 302,
# salvo-ref (salvo answering a fixed 302: salvo's own ceiling) and lean-ref (the same answer
# written by hand on keep-alive connections read with httparse, the way linkpulse's lean stream
# writer serves /realtime/), all by wrk with the same connections, in the same rounds:
#
#   load-tests/lean-ceiling.sh [rounds] [seconds] [connections]
#
# Prints each round's requests/s and the medians of lean-ref / salvo-ref and of each to nginx.
# None of the three looks anything up or counts a click: the figures bound what a front door of
# ours could add on linkpulse's redirect path, not what linkpulse reaches.
#
# Needs: wrk and nginx (apt-get install wrk nginx), a release build of the workspace
# (salvo-ref and lean-ref). Everything listens on 127.0.0.1 only; each wrk run is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SECONDS_EACH=${2:-10}
CONNS=${3:-64}
DIR=${CARGO_TARGET_DIR:-target}/release
for tool in wrk nginx curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk nginx curl)"; exit 1; }
done
for bin in salvo-ref lean-ref; do
    [ -x "$DIR/$bin" ] || { echo "no $bin in $DIR (cargo build --release -p salvo-ref)"; exit 1; }
done
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGINX_PORT=$(free_port)
SALVO_PORT=$(free_port)
LEAN_PORT=$(free_port)

# shellcheck source=load-tests/nginx-302.sh
source load-tests/nginx-302.sh
start_nginx_302 "$TMP" "$NGINX_PORT"
"$DIR/salvo-ref" "127.0.0.1:$SALVO_PORT" >/dev/null 2>&1 &
PIDS+=($!)
"$DIR/lean-ref" "127.0.0.1:$LEAN_PORT" >/dev/null 2>&1 &
PIDS+=($!)
for port in "$NGINX_PORT" "$SALVO_PORT" "$LEAN_PORT"; do
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/x" && break; sleep 0.1; done
done

rps() { # port -> requests/s
    local out
    out=$(wrk -t1 -c"$CONNS" -d"${SECONDS_EACH}s" "http://127.0.0.1:$1/hot")
    echo "$out" | awk '/Requests\/sec/ {printf "%d", $2}'
}
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "$@"; }

printf '%-6s %10s %10s %10s %10s %10s %10s\n' round nginx salvo-ref lean-ref lean/salvo salvo/ng lean/ng
LS=() SN=() LN=()
for round in $(seq "$ROUNDS"); do
    ng=$(rps "$NGINX_PORT")
    sv=$(rps "$SALVO_PORT")
    ln=$(rps "$LEAN_PORT")
    LS+=("$(ratio "$ln" "$sv")") SN+=("$(ratio "$sv" "$ng")") LN+=("$(ratio "$ln" "$ng")")
    printf '%-6s %10s %10s %10s %10s %10s %10s\n' "$round" "$ng" "$sv" "$ln" "${LS[-1]}" "${SN[-1]}" "${LN[-1]}"
done
echo "median lean-ref / salvo-ref: $(median "${LS[@]}"); to nginx: salvo-ref $(median "${SN[@]}"), lean-ref $(median "${LN[@]}")"
