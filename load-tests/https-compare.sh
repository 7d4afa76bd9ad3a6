#!/usr/bin/env bash
# HTTPS against nginx with the same certificate: redirects per second on kept-alive
# connections, and new connections per second, each with a full TLS handshake.
#
#   load-tests/https-compare.sh [rounds] [seconds] [connections]
#
# One self-signed ECDSA P-256 certificate (openssl) for `localhost` serves both: nginx with
# `return 302` over TLS, and linkpulse with --https-listen, --tls-cert and --tls-key, counting
# every click of one code. wrk drives both at https://localhost:<port>/hot, so SNI names the
# certificate. "handshakes" sends `Connection: close`, so every request opens a new connection.
# wrk's OpenSSL does not resume sessions, so each one is a full handshake. Each round prints
# both servers and the ratio; at the end come the medians, the TLS version and cipher each
# server agreed with openssl s_client, and a check that every 302 of linkpulse was a counted
# click.
#
# Needs: wrk, nginx, openssl, curl, and a release build (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECONDS_EACH=${2:-10}
CONNS=${3:-64}
BIN=${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}
KEY=lp_https_key_0123456789abcdef

for tool in wrk nginx openssl curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk nginx openssl curl)"; exit 1; }
done
[ -x "$BIN" ] || { echo "no release binary at $BIN (cargo build --release)"; exit 1; }

TMP=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGINX_PORT=$(free_port)
LP_PORT=$(free_port)
LPS_PORT=$(free_port)
cleanup() {
    if [ -n "${LP_PID:-}" ]; then
        kill "$LP_PID" 2>/dev/null && for _ in $(seq 150); do kill -0 "$LP_PID" 2>/dev/null || break; sleep 0.1; done
    fi
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null

# shellcheck source=load-tests/nginx-302.sh
source load-tests/nginx-302.sh
start_nginx_302 "$TMP" "$NGINX_PORT" "$TMP/cert.pem" "$TMP/key.pem"

LINKPULSE_INITIAL_API_KEY=$KEY LINKPULSE_LOG=warn LINKPULSE_MAX_CONNECTIONS_PER_CLIENT=0 \
    "$BIN" --listen "127.0.0.1:$LP_PORT" --https-listen "127.0.0.1:$LPS_PORT" \
    --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem" --data-dir "$TMP/data" >"$TMP/lp.log" 2>&1 &
LP_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$LP_PORT/healthz" >/dev/null && break; sleep 0.1; done
curl -sf -o /dev/null -X POST "http://127.0.0.1:$LP_PORT/api/links" \
    -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d '{"url":"https://example.com/target","code":"hot"}'

echo 0 > "$TMP/total"
rps() { # url [header] -> requests/s; linkpulse's completed responses are added up
    local out
    if [ -n "${2:-}" ]; then
        out=$(wrk -t1 -c"$CONNS" -d"${SECONDS_EACH}s" -H "$2" "$1")
    else
        out=$(wrk -t1 -c"$CONNS" -d"${SECONDS_EACH}s" "$1")
    fi
    echo "$out" | awk '/Requests\/sec/ {printf "%d", $2}'
    if [[ "$1" == *":$LPS_PORT/"* ]]; then
        echo $(($(cat "$TMP/total") + $(echo "$out" | awk '/requests in/ {print $1}'))) > "$TMP/total"
    fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

NG="https://localhost:$NGINX_PORT/hot"
LP="https://localhost:$LPS_PORT/hot"
printf '%-6s %12s %12s %8s %14s %14s %8s\n' round nginx linkpulse ratio nginx-new lp-new ratio
: > "$TMP/keep"; : > "$TMP/new"
for round in $(seq "$ROUNDS"); do
    ng=$(rps "$NG"); lp=$(rps "$LP")
    ngn=$(rps "$NG" "Connection: close"); lpn=$(rps "$LP" "Connection: close")
    r1=$(ratio "$lp" "$ng"); r2=$(ratio "$lpn" "$ngn")
    echo "$r1" >> "$TMP/keep"; echo "$r2" >> "$TMP/new"
    printf '%-6s %12s %12s %8s %14s %14s %8s\n' "$round" "$ng" "$lp" "$r1" "$ngn" "$lpn" "$r2"
done
echo "median ratio to nginx: kept-alive redirects $(median < "$TMP/keep"), new connections (a handshake each) $(median < "$TMP/new")"
for port in "$NGINX_PORT" "$LPS_PORT"; do
    agreed=$(echo | openssl s_client -connect "127.0.0.1:$port" -servername localhost 2>/dev/null |
        awk '/^New,/ {print $2, $NF}')
    echo "port $port: $agreed"
done
sleep 1
counted=$(curl -sf -H "Authorization: Bearer $KEY" "http://127.0.0.1:$LP_PORT/api/links/hot" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["clickCount"])')
echo "linkpulse counted $counted clicks, wrk completed $(cat "$TMP/total") responses (in-flight requests at the end of a run are counted by the server but not by wrk)"
