#!/usr/bin/env bash
# Redirect throughput of linkpulse beside nginx answering a fixed 302 and salvo's own ceiling
# (load-tests/salvo-ref: a salvo app answering a fixed 302 on /{code}, nothing else), same
# machine, same load tool (wrk), same run. Prints every round and the median ratios to nginx
# and to salvo.
#
#   load-tests/compare.sh [rounds] [seconds] [connections] [codes]
#
# Columns: GET on one hot code, GET over [codes] codes (a wrk Lua script picks each request's
# code; nginx and salvo-ref are measured with the same script), HEAD on the hot code (nothing
# counted), and GET on the hot code of a second linkpulse started with `--durability strict`
# (each redirect answered after its click's fsync). wrk cannot measure nginx with HEAD (nginx
# declares its 302 page's length and sends no body, and wrk waits for that body), so the HEAD
# ratio to nginx is to nginx's GET of the same round. STRICT=0 leaves the strict column out.
#
# With LINKPULSE_BIN_B set to a second build (an older commit, say), each round also measures
# that build right after the first, on its own store, and prints B's figures and A/B: a change
# measured against the build before it in the same minutes.
#
# Needs: wrk and nginx (apt-get install wrk nginx), a release build of the workspace
# (cargo build --release --workspace: linkpulse and salvo-ref).
# Everything listens on 127.0.0.1 only; each wrk run is bounded by its duration.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SECONDS_EACH=${2:-10}
CONNS=${3:-64}
NCODES=${4:-10000}
BIN=${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}
BIN_B=${LINKPULSE_BIN_B:-}
SALVO_BIN=${SALVO_REF_BIN:-$(dirname "$BIN")/salvo-ref}
DURABILITY=${DURABILITY:-default}
STRICT=${STRICT:-1}
KEY=lp_compare_key_0123456789abcdef

for tool in wrk nginx curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk nginx curl)"; exit 1; }
done
[ -x "$BIN" ] || { echo "no release binary at $BIN (cargo build --release)"; exit 1; }
[ -x "$SALVO_BIN" ] || { echo "no salvo reference at $SALVO_BIN (cargo build --release -p salvo-ref)"; exit 1; }

TMP=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
NGINX_PORT=$(free_port)
LP_PORT=$(free_port)
LPB_PORT=$(free_port)
LPS_PORT=$(free_port)
LPSB_PORT=$(free_port)
SALVO_PORT=$(free_port)

cleanup() {
    # The servers were started in command substitutions, so they are not this shell's
    # children: wait for them to exit (at most 15 s) before their data goes.
    for pid in ${LP_PID:-} ${LPB_PID:-} ${LPS_PID:-} ${LPSB_PID:-} ${SALVO_PID:-}; do
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

# shellcheck source=load-tests/nginx-302.sh
source load-tests/nginx-302.sh
start_nginx_302 "$TMP" "$NGINX_PORT"

# Creating the test links goes far past the default per-key and per-address create limits.
start() { # binary port data-dir [durability] -> pid
    LINKPULSE_CREATE_RATE_PER_KEY=0 LINKPULSE_CREATE_RATE_PER_IP=0 \
    LINKPULSE_INITIAL_API_KEY=$KEY LINKPULSE_LOG=warn "$1" --listen "127.0.0.1:$2" \
        --data-dir "$3" --durability "${4:-$DURABILITY}" >"$3.log" 2>&1 &
    echo $!
}
ready() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && break; sleep 0.1; done; }
LP_PID=$(start "$BIN" "$LP_PORT" "$TMP/data")
ready "$LP_PORT"
"$SALVO_BIN" "127.0.0.1:$SALVO_PORT" >"$TMP/salvo-ref.log" 2>&1 &
SALVO_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$SALVO_PORT/x" && break; sleep 0.1; done

create() { # port code
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$1/api/links" \
        -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        -d "{\"url\":\"https://example.com/target\",\"code\":\"$2\"}"
}
export -f create
export KEY
seq -f "c%06g" 1 "$NCODES" > "$TMP/codes"
links_on() { # port
    create "$1" hot
    echo "creating $NCODES links on port $1..."
    xargs -P 8 -I{} bash -c "create $1 {}" < "$TMP/codes"
}
links_on "$LP_PORT"
if [ -n "$BIN_B" ]; then
    [ -x "$BIN_B" ] || { echo "no binary at LINKPULSE_BIN_B=$BIN_B"; exit 1; }
    LPB_PID=$(start "$BIN_B" "$LPB_PORT" "$TMP/data-b")
    ready "$LPB_PORT"
    links_on "$LPB_PORT"
fi
# The strict servers only serve the hot code.
if [ "$STRICT" = 1 ]; then
    LPS_PID=$(start "$BIN" "$LPS_PORT" "$TMP/data-strict" strict)
    ready "$LPS_PORT"
    create "$LPS_PORT" hot
    if [ -n "$BIN_B" ]; then
        LPSB_PID=$(start "$BIN_B" "$LPSB_PORT" "$TMP/data-strict-b" strict)
        ready "$LPSB_PORT"
        create "$LPSB_PORT" hot
    fi
fi

rps() { # url [script] -> requests/s; the completed responses go to $TMP/last-total
    local out
    if [ -n "${2:-}" ]; then
        out=$(CODES="$TMP/codes" wrk -t1 -c"$CONNS" -d"${SECONDS_EACH}s" -s "$2" "$1")
    else
        out=$(wrk -t1 -c"$CONNS" -d"${SECONDS_EACH}s" "$1")
    fi
    echo "$out" >> "$TMP/wrk.log"
    if echo "$out" | grep -q "Non-2xx"; then echo "errors in wrk run: $out" >&2; fi
    echo "$out" | awk '/requests in/ {print $1}' > "$TMP/last-total"
    echo "$out" | awk '/Requests\/sec/ {print $2}'
}
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
count_of() { # port -> the hot code's clickCount
    curl -sf -H "Authorization: Bearer $KEY" "http://127.0.0.1:$1/api/links/hot" | python3 -c 'import json,sys; print(json.load(sys.stdin)["clickCount"])'
}

hot_total_before=$(count_of "$LP_PORT")
wrk_hot=0; wrk_strict=0
# The wide runs use a wrk Lua script, which costs wrk itself time; nginx is measured with the
# same script so each ratio compares like with like.
# The first eleven columns are as before; HEAD and strict follow.
printf "%-6s %10s %10s %10s %8s %8s %10s %10s %10s %8s %8s %10s %10s %8s %8s %10s %8s %8s\n" \
    round nginx salvo hot hot/ng hot/sv nginx-lua salvo-lua wide wide/ng wide/sv \
    salvo-head head head/ng head/sv strict str/ng str/sv
ratios_hot=(); ratios_wide=(); sv_hot=(); sv_wide=(); ab_hot=(); ab_wide=()
ng_head=(); sv_head=(); ng_strict=(); sv_strict=(); ab_head=(); ab_strict=()
for r in $(seq "$ROUNDS"); do
    ng=$(rps "http://127.0.0.1:$NGINX_PORT/hot")
    sv=$(rps "http://127.0.0.1:$SALVO_PORT/hot")
    hot=$(rps "http://127.0.0.1:$LP_PORT/hot")
    wrk_hot=$((wrk_hot + $(cat "$TMP/last-total")))
    ngw=$(rps "http://127.0.0.1:$NGINX_PORT/" load-tests/wrk-codes.lua)
    svw=$(rps "http://127.0.0.1:$SALVO_PORT/" load-tests/wrk-codes.lua)
    wide=$(rps "http://127.0.0.1:$LP_PORT/" load-tests/wrk-codes.lua)
    svh=$(rps "http://127.0.0.1:$SALVO_PORT/hot" load-tests/wrk-head.lua)
    head=$(rps "http://127.0.0.1:$LP_PORT/hot" load-tests/wrk-head.lua)
    strict=0
    if [ "$STRICT" = 1 ]; then
        strict=$(rps "http://127.0.0.1:$LPS_PORT/hot")
        wrk_strict=$((wrk_strict + $(cat "$TMP/last-total")))
    fi
    rh=$(ratio "$hot" "$ng"); sh=$(ratio "$hot" "$sv")
    rw=$(ratio "$wide" "$ngw"); sw=$(ratio "$wide" "$svw")
    hn=$(ratio "$head" "$ng"); hs=$(ratio "$head" "$svh")
    stn=$(ratio "$strict" "$ng"); sts=$(ratio "$strict" "$sv")
    ratios_hot+=("$rh"); ratios_wide+=("$rw"); sv_hot+=("$sh"); sv_wide+=("$sw")
    ng_head+=("$hn"); sv_head+=("$hs"); ng_strict+=("$stn"); sv_strict+=("$sts")
    printf "%-6s %10.0f %10.0f %10.0f %8s %8s %10.0f %10.0f %10.0f %8s %8s %10.0f %10.0f %8s %8s %10.0f %8s %8s\n" \
        "$r" "$ng" "$sv" "$hot" "$rh" "$sh" "$ngw" "$svw" "$wide" "$rw" "$sw" \
        "$svh" "$head" "$hn" "$hs" "$strict" "$stn" "$sts"
    if [ -n "$BIN_B" ]; then
        hotb=$(rps "http://127.0.0.1:$LPB_PORT/hot")
        wideb=$(rps "http://127.0.0.1:$LPB_PORT/" load-tests/wrk-codes.lua)
        headb=$(rps "http://127.0.0.1:$LPB_PORT/hot" load-tests/wrk-head.lua)
        strictb=1
        [ "$STRICT" = 1 ] && strictb=$(rps "http://127.0.0.1:$LPSB_PORT/hot")
        ab_hot+=("$(ratio "$hot" "$hotb")"); ab_wide+=("$(ratio "$wide" "$wideb")")
        ab_head+=("$(ratio "$head" "$headb")"); ab_strict+=("$(ratio "$strict" "$strictb")")
        printf "%-6s %10s %10s %10.0f %8s %8s %10s %10s %10.0f %8s %8s %10s %10.0f %8s %8s %10.0f %8s %8s   A/B hot %s, wide %s, head %s, strict %s\n" \
            "$r B" "" "" "$hotb" "$(ratio "$hotb" "$ng")" "$(ratio "$hotb" "$sv")" "" "" "$wideb" \
            "$(ratio "$wideb" "$ngw")" "$(ratio "$wideb" "$svw")" "" "$headb" \
            "$(ratio "$headb" "$ng")" "$(ratio "$headb" "$svh")" "$strictb" \
            "$(ratio "$strictb" "$ng")" "$(ratio "$strictb" "$sv")" \
            "${ab_hot[-1]}" "${ab_wide[-1]}" "${ab_head[-1]}" "${ab_strict[-1]}"
    fi
done
median() { printf "%s\n" "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median ratio to nginx: hot code $(median "${ratios_hot[@]}"), $NCODES codes $(median "${ratios_wide[@]}")"
echo "median ratio to salvo-ref: hot code $(median "${sv_hot[@]}"), $NCODES codes $(median "${sv_wide[@]}")"
echo "median ratio HEAD (hot code, nothing counted): to nginx's GET $(median "${ng_head[@]}"), to salvo-ref's HEAD $(median "${sv_head[@]}")"
if [ "$STRICT" = 1 ]; then
    echo "median ratio strict (hot code): to nginx $(median "${ng_strict[@]}"), to salvo-ref $(median "${sv_strict[@]}")"
fi
if [ -n "$BIN_B" ]; then
    echo "median A/B (A: $BIN, B: $BIN_B): hot code $(median "${ab_hot[@]}"), $NCODES codes $(median "${ab_wide[@]}")"
    echo "median A/B: HEAD $(median "${ab_head[@]}")$([ "$STRICT" = 1 ] && echo ", strict $(median "${ab_strict[@]}")")"
fi

# Every 302 must be a counted click: compare the server's count with wrk's totals.
sleep 0.5
hot_total=$(count_of "$LP_PORT")
echo "hot code: server counted $((hot_total - hot_total_before)) clicks, wrk completed $wrk_hot responses (in-flight requests at the end of a run are counted by the server but not by wrk)"
if [ "$STRICT" = 1 ]; then
    echo "strict, hot code: server counted $(count_of "$LPS_PORT") clicks, wrk completed $wrk_strict responses"
fi
