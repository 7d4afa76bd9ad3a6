#!/usr/bin/env bash
# Memory per live viewer over HTTPS against plain HTTP: for each kind a fresh release server
# (a self-signed certificate for `localhost` by openssl) takes [viewers] streams of one link,
# opened by load-tests/https-viewers.py, which prints the growth of the server's VmRSS per
# viewer. Run in the same minutes, so the difference is what TLS adds to a viewer.
#
#   load-tests/https-viewers.sh [viewers]
#
# Needs: openssl, curl, python3, a release build, and an open-file limit above [viewers]
# (ulimit -n; the default 15,000 fits this machine's 20,000).
set -euo pipefail
cd "$(dirname "$0")/.."
VIEWERS=${1:-15000}
BIN=${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}
KEY=lp_https_key_0123456789abcdef
[ -x "$BIN" ] || { echo "no release binary at $BIN (cargo build --release)"; exit 1; }
ulimit -n "$(ulimit -Hn)"
TMP=$(mktemp -d)
cleanup() {
    if [ -n "${PID:-}" ]; then
        kill "$PID" 2>/dev/null && for _ in $(seq 150); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for kind in plain https; do
    PORT=$(free_port); TLS_PORT=$(free_port)
    rm -rf "$TMP/data"
    LINKPULSE_INITIAL_API_KEY=$KEY LINKPULSE_LOG=warn LINKPULSE_MAX_CONNECTIONS_PER_CLIENT=0 \
        LINKPULSE_SSE_MAX_PER_CLIENT=0 "$BIN" --listen "127.0.0.1:$PORT" \
        --https-listen "127.0.0.1:$TLS_PORT" --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem" \
        --data-dir "$TMP/data" >"$TMP/$kind.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$PORT/api/links" \
        -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        -d '{"url":"https://example.com/target","code":"hot"}'
    if [ "$kind" = plain ]; then
        python3 load-tests/https-viewers.py --pid "$PID" --address "127.0.0.1:$PORT" --viewers "$VIEWERS"
    else
        python3 load-tests/https-viewers.py --pid "$PID" --address "127.0.0.1:$TLS_PORT" \
            --ca "$TMP/cert.pem" --viewers "$VIEWERS"
    fi
    kill "$PID"; for _ in $(seq 150); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    PID=
done
