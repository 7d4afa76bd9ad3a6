#!/usr/bin/env bash
# Redirect throughput of linkpulse beside nginx answering a fixed 302, same machine, same load
# tool (wrk), same run. Prints every round and the median ratio to nginx.
#
#   load-tests/compare.sh [rounds] [seconds] [connections] [codes]
#
# Needs: wrk and nginx (apt-get install wrk nginx), a release build (cargo build --release).
# Everything listens on 127.0.0.1 only; each wrk run is bounded by its duration.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SECONDS_EACH=${2:-10}
CONNS=${3:-64}
NCODES=${4:-10000}
BIN=${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}
DURABILITY=${DURABILITY:-default}
KEY=lp_compare_key_0123456789abcdef

for tool in wrk nginx curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk nginx curl)"; exit 1; }
done
[ -x "$BIN" ] || { echo "no release binary at $BIN (cargo build --release)"; exit 1; }

TMP=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGINX_PORT=$(free_port)
LP_PORT=$(free_port)

cleanup() {
    [ -n "${LP_PID:-}" ] && kill "$LP_PID" 2>/dev/null && wait "$LP_PID" 2>/dev/null || true
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

cat > "$TMP/nginx.conf" <<NGINX
worker_processes auto;
daemon on;
pid $TMP/nginx.pid;
error_log $TMP/nginx-error.log;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP;
    proxy_temp_path $TMP;
    fastcgi_temp_path $TMP;
    uwsgi_temp_path $TMP;
    scgi_temp_path $TMP;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / { return 302 https://example.com/target; }
    }
}
NGINX
nginx -c "$TMP/nginx.conf" -p "$TMP"

# Creating the test links goes far past the default per-key and per-address create limits.
LINKPULSE_CREATE_RATE_PER_KEY=0 LINKPULSE_CREATE_RATE_PER_IP=0 \
LINKPULSE_INITIAL_API_KEY=$KEY LINKPULSE_LOG=warn "$BIN" --listen "127.0.0.1:$LP_PORT" \
    --data-dir "$TMP/data" --durability "$DURABILITY" >"$TMP/linkpulse.log" 2>&1 &
LP_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$LP_PORT/healthz" >/dev/null && break; sleep 0.1; done

create() {
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$LP_PORT/api/links" \
        -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        -d "{\"url\":\"https://example.com/target\",\"code\":\"$1\"}"
}
export -f create
export LP_PORT KEY
create hot
echo "creating $NCODES links..."
seq -f "c%06g" 1 "$NCODES" > "$TMP/codes"
xargs -P 8 -I{} bash -c 'create {}' < "$TMP/codes"

rps() { # url [script] -> requests/s
    local out
    if [ -n "${2:-}" ]; then
        out=$(CODES="$TMP/codes" wrk -t1 -c"$CONNS" -d"${SECONDS_EACH}s" -s "$2" "$1")
    else
        out=$(wrk -t1 -c"$CONNS" -d"${SECONDS_EACH}s" "$1")
    fi
    echo "$out" >> "$TMP/wrk.log"
    if echo "$out" | grep -q "Non-2xx"; then echo "errors in wrk run: $out" >&2; fi
    echo "$out" | awk '/Requests\/sec/ {print $2}'
}

hot_total_before=$(curl -sf -H "Authorization: Bearer $KEY" "http://127.0.0.1:$LP_PORT/api/links/hot" | python3 -c 'import json,sys; print(json.load(sys.stdin)["clickCount"])')
# The wide runs use a wrk Lua script, which costs wrk itself time; nginx is measured with the
# same script so each ratio compares like with like.
printf "%-6s %10s %10s %8s %10s %10s %8s\n" round nginx hot hot/ng nginx-lua wide wide/ng
ratios_hot=(); ratios_wide=()
for r in $(seq "$ROUNDS"); do
    ng=$(rps "http://127.0.0.1:$NGINX_PORT/hot")
    hot=$(rps "http://127.0.0.1:$LP_PORT/hot")
    ngw=$(rps "http://127.0.0.1:$NGINX_PORT/" load-tests/wrk-codes.lua)
    wide=$(rps "http://127.0.0.1:$LP_PORT/" load-tests/wrk-codes.lua)
    rh=$(python3 -c "print(f'{$hot/$ng:.2f}')")
    rw=$(python3 -c "print(f'{$wide/$ngw:.2f}')")
    ratios_hot+=("$rh"); ratios_wide+=("$rw")
    printf "%-6s %10.0f %10.0f %8s %10.0f %10.0f %8s\n" "$r" "$ng" "$hot" "$rh" "$ngw" "$wide" "$rw"
done
median() { printf "%s\n" "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median ratio to nginx: hot code $(median "${ratios_hot[@]}"), $NCODES codes $(median "${ratios_wide[@]}")"

# Every 302 must be a counted click: compare the server's count with wrk's totals.
sleep 0.5
hot_total=$(curl -sf -H "Authorization: Bearer $KEY" "http://127.0.0.1:$LP_PORT/api/links/hot" | python3 -c 'import json,sys; print(json.load(sys.stdin)["clickCount"])')
wrk_hot=$(awk '/requests in/ {print $1}' "$TMP/wrk.log" | awk 'NR % 4 == 2 {s += $1} END {print s}')
echo "hot code: server counted $((hot_total - hot_total_before)) clicks, wrk completed $wrk_hot responses (in-flight requests at the end of a run are counted by the server but not by wrk)"
