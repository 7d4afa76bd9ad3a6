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
# After every hot-code run it waits for the count to settle (see cluster-lib.sh) and prints
# `counted: X of Y`: the increase of the code's clickCount (GET /api/links/hot on the node
# that was loaded, through nginx for ng) against the 2xx/3xx answers wrk reported. X can
# exceed Y by up to [connections]: requests in flight when wrk stops are counted by the
# server, not by wrk. X < Y is a lost click: the script then exits 1 (after printing
# everything).
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

# Where each column's node listens, and the code names of its runs.
declare -A URL
echo "starting fjall, JetStream R1 and R3 nodes (default and strict)..." >&2
URL[fj]=http://127.0.0.1:$(free_port)
URL[fjs]=http://127.0.0.1:$(free_port)
start_node fj "${URL[fj]##*:}" default
start_node fjs "${URL[fjs]##*:}" strict

# R1: one nats-server.
R1_CLIENT=$(free_port)
start_nats nats-r1 "$R1_CLIENT" "$(free_port)" 1
URL[r1]=http://127.0.0.1:$(free_port)
URL[r1s]=http://127.0.0.1:$(free_port)
# The first node makes the streams and buckets; the second starts after it is healthy.
start_node r1 "${URL[r1]##*:}" default "nats://127.0.0.1:$R1_CLIENT" 1
start_node r1s "${URL[r1s]##*:}" strict "nats://127.0.0.1:$R1_CLIENT" 1

# R3: three nats-servers in one JetStream cluster.
declare -a R3_CLIENT R3_HTTP R3_ROUTE
for i in 1 2 3; do R3_CLIENT[i]=$(free_port); R3_HTTP[i]=$(free_port); R3_ROUTE[i]=$(free_port); done
ROUTES="nats-route://127.0.0.1:${R3_ROUTE[1]}, nats-route://127.0.0.1:${R3_ROUTE[2]}, nats-route://127.0.0.1:${R3_ROUTE[3]}"
R3_URLS="nats://127.0.0.1:${R3_CLIENT[1]},nats://127.0.0.1:${R3_CLIENT[2]},nats://127.0.0.1:${R3_CLIENT[3]}"
for i in 1 2 3; do start_nats "nats-r3-$i" "${R3_CLIENT[i]}" "${R3_HTTP[i]}" 0 "${R3_ROUTE[i]}" "$ROUTES"; done
for i in 1 2 3; do
    wait_http "http://127.0.0.1:${R3_HTTP[i]}/healthz" "${STARTED_PIDS[-4 + i]}" 60 "nats-r3-$i" "$TMP/nats-r3-$i.log"
done
URL[r3]=http://127.0.0.1:$(free_port)
URL[r3s]=http://127.0.0.1:$(free_port)
start_node r3 "${URL[r3]##*:}" default "$R3_URLS" 3
start_node r3s "${URL[r3s]##*:}" strict "$R3_URLS" 3

# ng: the deploy set-up, as deploy/local-cluster.sh starts it.
echo "starting deploy/local-cluster.sh under $CLUSTER_DIR..." >&2
LINKPULSE_BIN=$BIN deploy/local-cluster.sh up "$CLUSTER_DIR" >"$TMP/cluster.out"
NG_ADDR=$(sed -n 's/^nginx=//p' "$TMP/cluster.out")
NG_KEY=$(sed -n 's/^key=//p' "$TMP/cluster.out")
mapfile -t NG_NODES < <(sed -n 's/^node=.* addr=//p' "$TMP/cluster.out")
URL[ng]=http://$NG_ADDR

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

# One wrk run. Prints requests/s; the 2xx/3xx answers go to $TMP/last-ok, a note on errors
# (non-2xx/3xx answers, socket errors) to $TMP/last-note.
run_wrk() { # url [codes-file]
    local out ok bad sock
    if [ -n "${2:-}" ]; then
        out=$(CODES=$2 wrk -t1 -c"$CONNS" -d"${SECONDS_EACH}s" -s load-tests/wrk-codes.lua "$1")
    else
        out=$(wrk -t1 -c"$CONNS" -d"${SECONDS_EACH}s" "$1")
    fi
    printf '%s\n\n' "$out" >>"$TMP/wrk.log"
    ok=$(awk '/requests in/ {print $1}' <<<"$out")
    bad=$(awk '/Non-2xx or 3xx responses/ {print $NF}' <<<"$out")
    sock=$(grep -o 'Socket errors:.*' <<<"$out" || true)
    echo "$((ok - ${bad:-0}))" >"$TMP/last-ok"
    echo "${bad:+ non-2xx/3xx: $bad}${sock:+ $sock}" >"$TMP/last-note"
    awk '/Requests\/sec/ {print $2}' <<<"$out"
}

declare -A RPS
LOST=0
# One measured run of column COL (a node name, plus -hot or -codes) in round R.
measure() { # round node kind(hot|codes)
    local r=$1 node=$2 kind=$3 url=${URL[$2]} key before after rps dropped_before dropped_after n
    local -a nodes=("$url")
    if [ "$node" = ng ]; then nodes=("${NG_NODES[@]/#/http://}"); fi
    key=$(key_of "$node")
    dropped_before=0
    for n in "${nodes[@]}"; do dropped_before=$((dropped_before + $(dropped_of "$n"))); done
    if [ "$kind" = hot ]; then
        before=$(count_of "$url" "$(hot_of "$node")" "$key")
        rps=$(run_wrk "$url/$(hot_of "$node")")
    else
        rps=$(run_wrk "$url/" "$TMP/codes-$(prefix_of "$node")")
    fi
    RPS[$r,$node-$kind]=$rps
    local line
    line=$(printf 'round %s  %-4s %-6s %10.0f req/s' "$r" "$node" "$kind" "$rps")
    if [ "$kind" = hot ]; then
        after=$(settled_count "$url" "$(hot_of "$node")" "$key")
        local counted=$((after - before)) ok
        ok=$(cat "$TMP/last-ok")
        line+="  counted: $counted of $ok"
        if [ "$counted" -lt "$ok" ]; then
            line+="  LOST $((ok - counted))"
            LOST=1
        elif [ "$counted" -gt $((ok + CONNS)) ]; then
            line+="  (more than the $CONNS in flight: counted twice?)"
        fi
    fi
    dropped_after=0
    for n in "${nodes[@]}"; do dropped_after=$((dropped_after + $(dropped_of "$n"))); done
    [ "$dropped_after" -eq "$dropped_before" ] || line+="  clicks dropped by the server: $((dropped_after - dropped_before))"
    echo "$line$(cat "$TMP/last-note")"
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
