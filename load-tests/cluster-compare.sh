#!/usr/bin/env bash
# Redirect throughput of one linkpulse node on each store, and of the 3-node cluster behind
# nginx, all driven by wrk in the same rounds:
#
#   fj   one node on fjall (--data-dir)
#   r1   one node on JetStream, one local nats-server (--nats-replicas 1)
#   r3   one node on JetStream, a cluster of 3 nats-servers (--nats-replicas 3)
#   ng   deploy/local-cluster.sh: 3 nats-servers, nodes a, b, c (R3) and nginx hashing on the
#        code (deploy/nginx-cluster.conf), wrk against nginx
#
#   load-tests/cluster-compare.sh [rounds] [seconds] [connections] [codes]
#
# For fj, r1 and r3: GET on one hot code, GET over [codes] codes (load-tests/wrk-codes.lua),
# each in default durability and on a second node of the same kind started with
# `--durability strict` (its own codes: `shot` and s0000001...; the default node has `hot` and
# c0000001..., so the two nodes sharing a JetStream never click the same code). For ng: hot
# and [codes] codes, default durability. Prints a line per run as it ends, then the table of
# requests/s per round and the median ratios of each JetStream column to the fjall column of
# the same kind, and of nginx + cluster to one fjall node.
#
# After every run it waits until the loaded node(s) have stored every click they took
# (linkpulse_backlog_clicks back to 0, at most 60 s; `stored N s after the run` when that took
# time) and prints `counted: X of Y`: the increase of the clickCount of the hot code (GET
# /api/links/hot on the loaded node, through nginx for ng, once it has settled), or of the sum
# over the [codes] codes (`linkpulse-load counts`), against the 2xx/3xx answers wrk reported.
# X can exceed Y by up to [connections]: requests in flight when wrk stops are counted by the
# server, not by wrk. X < Y means clicks were lost: `LOST N`, and the script exits 1 after
# printing everything. `dropped by the server: N` is the increase of
# linkpulse_clicks_dropped_total on the loaded node(s) (redirects answered whose click was not
# counted, e.g. a full --click-backlog). `cpu:` is who used the CPU during the run, in % of one
# core (load-tests/cpu-share.py): lp the loaded linkpulse node(s), nats their nats-server(s),
# nginx, wrk, and rest (everything else on the machine: idle nodes of the other columns,
# other users' work). The machine has 2 cores: 200% in all.
#
# Needs: wrk, nginx, nats-server, curl, python3 and a release build of the workspace
# (linkpulse and linkpulse-load next to it). Everything listens on 127.0.0.1; every wrk run
# is bounded by its duration.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SECONDS_EACH=${2:-10}
CONNS=${3:-64}
NCODES=${4:-10000}
BIN=$(realpath "${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}")
LOAD=$(realpath "${LINKPULSE_LOAD_BIN:-$(dirname "$BIN")/linkpulse-load}")
KEY=lp_cluster_compare_key_0123456789
# Every node here (and in local-cluster.sh, which passes the environment on) keeps its link
# actors for the whole script. With the default (60s), the [codes] actors of a node stop
# together a minute after its codes run, each storing its aggregates snapshot, and that burst
# (about 6 CPU-seconds per 10,000 actors on JetStream R1) lands in a later run of another
# column. Set LINKPULSE_IDLE_TIMEOUT to measure with another value.
export LINKPULSE_IDLE_TIMEOUT=${LINKPULSE_IDLE_TIMEOUT:-1h}

for tool in wrk nginx nats-server curl python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool"; exit 1; }
done
[ -x "$BIN" ] || { echo "no release binary at $BIN (cargo build --release)"; exit 1; }
[ -x "$LOAD" ] || { echo "no linkpulse-load at $LOAD (cargo build --release --workspace)"; exit 1; }

TMP=$(mktemp -d /tmp/lp-cluster-compare.XXXXXX)
# shellcheck source-path=SCRIPTDIR source=cluster-lib.sh
. load-tests/cluster-lib.sh
CLUSTER_DIR=$TMP/cluster
cleanup() {
    if [ -d "$CLUSTER_DIR" ]; then deploy/local-cluster.sh down "$CLUSTER_DIR" >/dev/null 2>&1 || true; fi
    stop_started
    rm -rf "$TMP"
}
trap cleanup EXIT

# Where each column's node listens, and its processes: LP_PIDS (the node, or nodes and nginx)
# and NATS_PIDS (its nats-servers), comma-separated, for the CPU shares.
declare -A URL LP_PIDS NATS_PIDS
echo "starting fjall, JetStream R1 and R3 nodes (default and strict)..." >&2
node_here() { # name durability [nats-urls replicas]
    URL[$1]=http://127.0.0.1:$(free_port)
    start_node "$1" "${URL[$1]##*:}" "${@:2}"
    LP_PIDS[$1]=${STARTED_PIDS[-1]}
}
node_here fj default
node_here fjs strict

# R1: one nats-server.
R1_CLIENT=$(free_port)
start_nats nats-r1 "$R1_CLIENT" "$(free_port)" 1
NATS_PIDS[r1]=${STARTED_PIDS[-1]}
# The first node makes the streams and buckets; the second starts after it is healthy.
node_here r1 default "nats://127.0.0.1:$R1_CLIENT" 1
node_here r1s strict "nats://127.0.0.1:$R1_CLIENT" 1
NATS_PIDS[r1s]=${NATS_PIDS[r1]}

# R3: three nats-servers in one JetStream cluster.
declare -a R3_CLIENT R3_HTTP R3_ROUTE
for i in 1 2 3; do R3_CLIENT[i]=$(free_port); R3_HTTP[i]=$(free_port); R3_ROUTE[i]=$(free_port); done
ROUTES="nats-route://127.0.0.1:${R3_ROUTE[1]}, nats-route://127.0.0.1:${R3_ROUTE[2]}, nats-route://127.0.0.1:${R3_ROUTE[3]}"
R3_URLS="nats://127.0.0.1:${R3_CLIENT[1]},nats://127.0.0.1:${R3_CLIENT[2]},nats://127.0.0.1:${R3_CLIENT[3]}"
for i in 1 2 3; do start_nats "nats-r3-$i" "${R3_CLIENT[i]}" "${R3_HTTP[i]}" 0 "${R3_ROUTE[i]}" "$ROUTES"; done
NATS_PIDS[r3]="${STARTED_PIDS[-3]},${STARTED_PIDS[-2]},${STARTED_PIDS[-1]}"
NATS_PIDS[r3s]=${NATS_PIDS[r3]}
for i in 1 2 3; do
    wait_http "http://127.0.0.1:${R3_HTTP[i]}/healthz" "${STARTED_PIDS[-4 + i]}" 60 "nats-r3-$i" "$TMP/nats-r3-$i.log"
done
node_here r3 default "$R3_URLS" 3
node_here r3s strict "$R3_URLS" 3

# ng: the deploy set-up, as deploy/local-cluster.sh starts it.
echo "starting deploy/local-cluster.sh under $CLUSTER_DIR..." >&2
LINKPULSE_BIN=$BIN deploy/local-cluster.sh up "$CLUSTER_DIR" >"$TMP/cluster.out"
NG_ADDR=$(sed -n 's/^nginx=//p' "$TMP/cluster.out")
NG_KEY=$(sed -n 's/^key=//p' "$TMP/cluster.out")
mapfile -t NG_NODES < <(sed -n 's/^node=.* addr=//p' "$TMP/cluster.out")
URL[ng]=http://$NG_ADDR
# shellcheck disable=SC1091
NG_NATS=$(. "$CLUSTER_DIR/cluster.env" && echo "$LP_NATS_PIDS")
# shellcheck disable=SC1091
NG_NGINX=$(. "$CLUSTER_DIR/cluster.env" && echo "$LP_NGINX_PID")
LP_PIDS[ng]=$(sed -n 's/^node=.* pid=\([0-9]*\) .*/\1/p' "$TMP/cluster.out" | paste -sd,)
NATS_PIDS[ng]=${NG_NATS// /,}

seq -f "c%07.0f" 1 "$NCODES" >"$TMP/codes-c"
seq -f "s%07.0f" 1 "$NCODES" >"$TMP/codes-s"
key_of() { if [ "$1" = ng ]; then echo "$NG_KEY"; else echo "$KEY"; fi; }
hot_of() { case $1 in *s) echo shot ;; *) echo hot ;; esac; }
prefix_of() { case $1 in *s) echo s ;; *) echo c ;; esac; }
for node in fj fjs r1 r1s r3 r3s ng; do
    echo "creating $(hot_of "$node") and $NCODES links on $node (${URL[$node]})..." >&2
    curl -sf -o /dev/null -X POST "${URL[$node]}/api/links" -H "Authorization: Bearer $(key_of "$node")" \
        -H 'Content-Type: application/json' -d "{\"url\":\"https://example.com/\",\"code\":\"$(hot_of "$node")\"}"
    "$LOAD" --base-url "${URL[$node]}" --key "$(key_of "$node")" \
        create --codes "$NCODES" --prefix "$(prefix_of "$node")" --concurrency 16 | sed 's/^/  /' >&2
done

# One wrk run against URL (with the codes file: wrk-codes.lua). Sets WRK_RPS, WRK_OK (2xx/3xx
# answers), WRK_NOTE (non-2xx/3xx answers, socket errors) and CPU (who used the CPU from about
# 0.8 s into the run to 70% of it plus 0.8 s, while wrk surely still runs: cpu-share.py).
run_wrk() { # url codes-file-or-empty lp-pids nats-pids
    local -a args=(-t1 -c"$CONNS" -d"${SECONDS_EACH}s")
    if [ -n "$2" ]; then args+=(-s load-tests/wrk-codes.lua); fi
    CODES=$2 wrk "${args[@]}" "$1" >"$TMP/wrk.out" &
    local wrk_pid=$! out bad sock
    sleep 0.3
    python3 load-tests/cpu-share.py snap "$TMP/cpu-0"
    sleep "$(python3 -c "print(max(0.1, $SECONDS_EACH * 0.7))")"
    python3 load-tests/cpu-share.py snap "$TMP/cpu-1"
    wait "$wrk_pid"
    local -a groups=("lp=$3")
    if [ -n "$4" ]; then groups+=("nats=$4"); fi
    if [ "$1" != "${1#"${URL[ng]}"}" ]; then groups+=("nginx=$NG_NGINX"); fi
    CPU=$(python3 load-tests/cpu-share.py report "$TMP/cpu-0" "$TMP/cpu-1" "${groups[@]}" wrk=comm:wrk)
    out=$(<"$TMP/wrk.out")
    printf '%s\n\n' "$out" >>"$TMP/wrk.log"
    bad=$(awk '/Non-2xx or 3xx responses/ {print $NF}' <<<"$out")
    sock=$(grep -o 'Socket errors:.*' <<<"$out" || true)
    WRK_OK=$(($(awk '/requests in/ {print $1}' <<<"$out") - ${bad:-0}))
    WRK_NOTE="${bad:+  non-2xx/3xx: $bad}${sock:+  $sock}"
    WRK_RPS=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
}

# Clicks taken and not yet stored, over the given node URLs.
backlog_of() {
    local n sum=0 b
    for n in "$@"; do
        b=$(curl -sf --max-time 5 "$n/metrics" 2>/dev/null | awk '/^linkpulse_backlog_clicks / {print $2}' || true)
        sum=$((sum + ${b:-0}))
    done
    echo "$sum"
}
# Waits (60 s at most) until the nodes have stored every click they took; sets DRAIN to the
# seconds it took (empty when there was nothing to wait for).
drain() {
    local t0 i
    DRAIN=
    [ "$(backlog_of "$@")" -gt 0 ] || return 0
    t0=$(date +%s.%N)
    for i in $(seq 600); do
        [ "$(backlog_of "$@")" -gt 0 ] || break
        sleep 0.1
    done
    DRAIN=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
    [ "$i" -lt 600 ] || DRAIN="over $DRAIN"
}
# The sum of clickCount over the column's many codes.
codes_sum() { # node
    "$LOAD" --base-url "${URL[$1]}" --key "$(key_of "$1")" counts --codes "$NCODES" \
        --prefix "$(prefix_of "$1")" --concurrency 16 | sed -n 's/^sum of clickCount: *//p'
}

declare -A RPS
LOST=0
# One measured run of a node (column NODE-KIND) in round R, and its count check.
measure() { # round node kind(hot|codes)
    local r=$1 node=$2 kind=$3 url=${URL[$2]} key before after dropped_before dropped_after n
    local -a nodes=("$url")
    if [ "$node" = ng ]; then nodes=("${NG_NODES[@]/#/http://}"); fi
    key=$(key_of "$node")
    dropped_before=0
    for n in "${nodes[@]}"; do dropped_before=$((dropped_before + $(dropped_of "$n"))); done
    if [ "$kind" = hot ]; then
        before=$(count_of "$url" "$(hot_of "$node")" "$key")
        run_wrk "$url/$(hot_of "$node")" "" "${LP_PIDS[$node]}" "${NATS_PIDS[$node]:-}"
    else
        before=$(codes_sum "$node")
        run_wrk "$url/" "$TMP/codes-$(prefix_of "$node")" "${LP_PIDS[$node]}" "${NATS_PIDS[$node]:-}"
    fi
    drain "${nodes[@]}"
    if [ "$kind" = hot ]; then
        after=$(settled_count "$url" "$(hot_of "$node")" "$key")
    else
        after=$(codes_sum "$node")
    fi
    RPS[$r,$node-$kind]=$WRK_RPS
    local line counted
    if [ -n "$before" ] && [ -n "$after" ]; then counted=$((after - before)); else counted=unreadable; fi
    line=$(printf 'round %s  %-4s %-6s %10.0f req/s  counted: %s of %s' "$r" "$node" "$kind" "$WRK_RPS" "$counted" "$WRK_OK")
    if [ "$counted" = unreadable ]; then
        LOST=1
    elif [ "$counted" -lt "$WRK_OK" ]; then
        line+="  LOST $((WRK_OK - counted))"
        LOST=1
    elif [ "$counted" -gt $((WRK_OK + CONNS)) ]; then
        line+="  (more than the $CONNS in flight: counted twice?)"
    fi
    dropped_after=0
    for n in "${nodes[@]}"; do dropped_after=$((dropped_after + $(dropped_of "$n"))); done
    if [ "$dropped_after" -ne "$dropped_before" ]; then
        line+="  dropped by the server: $((dropped_after - dropped_before))"
    fi
    if [ -n "$DRAIN" ]; then line+="  stored ${DRAIN} s after the run"; fi
    echo "$line$WRK_NOTE  cpu: $CPU"
}

echo "$ROUNDS rounds of ${SECONDS_EACH} s wrk runs, $CONNS connections, $NCODES codes"
for r in $(seq "$ROUNDS"); do
    for kind in hot codes; do
        for node in fj r1 r3; do measure "$r" "$node" "$kind"; done
    done
    for kind in hot codes; do
        for node in fjs r1s r3s; do measure "$r" "$node" "$kind"; done
    done
    for kind in hot codes; do measure "$r" ng "$kind"; done
done

COLS=(fj-hot r1-hot r3-hot fj-codes r1-codes r3-codes fjs-hot r1s-hot r3s-hot
    fjs-codes r1s-codes r3s-codes ng-hot ng-codes)
echo
echo "requests/s (fj: fjall, r1/r3: JetStream R1/R3, s: --durability strict, ng: nginx + 3 nodes on R3)"
printf '%-6s' round
for c in "${COLS[@]}"; do printf ' %9s' "$c"; done
echo
for r in $(seq "$ROUNDS"); do
    printf '%-6s' "$r"
    for c in "${COLS[@]}"; do printf ' %9.0f' "${RPS[$r,$c]}"; done
    echo
done

ratios() { # numerator-column denominator-column -> median over rounds
    local -a rs=()
    for r in $(seq "$ROUNDS"); do rs+=("$(ratio "${RPS[$r,$1]}" "${RPS[$r,$2]}")"); done
    median "${rs[@]}"
}
echo
echo "median ratio to the fjall node of the same kind ($ROUNDS rounds; hot code, $NCODES codes):"
printf '%-22s %8s %8s %12s %12s\n' "" hot codes strict-hot strict-codes
for be in r1 r3; do
    printf '%-22s %8s %8s %12s %12s\n' "JetStream ${be^^}" \
        "$(ratios "$be-hot" fj-hot)" "$(ratios "$be-codes" fj-codes)" \
        "$(ratios "${be}s-hot" fjs-hot)" "$(ratios "${be}s-codes" fjs-codes)"
done
printf '%-22s %8s %8s %12s %12s\n' "fjall strict/default" \
    "$(ratios fjs-hot fj-hot)" "$(ratios fjs-codes fj-codes)" - -
echo "median ratio nginx + 3-node cluster (R3) to one fjall node: hot $(ratios ng-hot fj-hot), $NCODES codes $(ratios ng-codes fj-codes)"

if [ "$LOST" = 1 ]; then
    echo "FAILED: a run lost clicks (counted < 2xx/3xx answers, see LOST above)"
    exit 1
fi
