# shellcheck shell=bash
# Shared by cluster-compare.sh, cluster-fanout.sh and failover.sh (sourced, not run).
# Starts nats-server and linkpulse processes on 127.0.0.1 and remembers their pids in
# STARTED_PIDS, so that stop_started (from the caller's EXIT trap) ends exactly those.
# Expects: set -euo pipefail, $TMP (a scratch directory), $BIN (the linkpulse binary), $KEY.

STARTED_PIDS=()

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits until URL answers 200 while PID lives, at most SECS; prints the end of LOG on failure.
wait_http() { # url pid secs name log
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "$4 exited; the end of $5:" >&2
            tail -n 20 "$5" >&2 || true
            return 1
        fi
        curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "$4 not ready at $1 after $3 s; the end of $5:" >&2
    tail -n 20 "$5" >&2 || true
    return 1
}

# One nats-server with JetStream under $TMP/NAME. With CLUSTER_PORT and ROUTES it joins the
# JetStream cluster `lp` (as deploy/local-cluster.sh configures it). Waits for its /healthz
# only when WAIT is 1 (the servers of a cluster become healthy together).
start_nats() { # name client_port http_port wait [cluster_port routes]
    local name=$1 conf=$TMP/$1.conf
    mkdir -p "$TMP/$name"
    {
        echo "server_name: $name"
        echo "listen: 127.0.0.1:$2"
        echo "http: 127.0.0.1:$3"
        echo "jetstream { store_dir: \"$TMP/$name\" }"
        if [ -n "${5:-}" ]; then
            echo "cluster { name: lp, listen: 127.0.0.1:$5, routes: [$6] }"
        fi
    } >"$conf"
    nats-server -c "$conf" >"$TMP/$name.log" 2>&1 &
    STARTED_PIDS+=("$!")
    if [ "$4" = 1 ]; then wait_http "http://127.0.0.1:$3/healthz" "$!" 60 "$name" "$TMP/$name.log"; fi
}

# A linkpulse node on PORT; fjall under $TMP/NAME, or JetStream when NATS_URLS is given.
# Create limits are lifted (the scripts make thousands of links with an admin key anyway),
# and so are the per-client stream and connection caps: every load tool connects from
# 127.0.0.1. Waits for /healthz.
start_node() { # name port durability [nats_urls replicas]
    local name=$1 port=$2 durability=$3
    local -a store=(--data-dir "$TMP/$name")
    mkdir -p "$TMP/$name"
    if [ -n "${4:-}" ]; then store+=(--nats "$4" --nats-replicas "$5"); fi
    LINKPULSE_CREATE_RATE_PER_KEY=0 LINKPULSE_CREATE_RATE_PER_IP=0 \
    LINKPULSE_SSE_MAX_PER_CLIENT=0 LINKPULSE_MAX_CONNECTIONS_PER_CLIENT=0 \
    LINKPULSE_INITIAL_API_KEY=$KEY LINKPULSE_LOG=warn "$BIN" serve --listen "127.0.0.1:$port" \
        "${store[@]}" --durability "$durability" >"$TMP/$name.log" 2>&1 &
    STARTED_PIDS+=("$!")
    wait_http "http://127.0.0.1:$port/healthz" "$!" 120 "linkpulse $name" "$TMP/$name.log"
}

# Stops every process started here, newest first (so a node before the NATS it flushes to):
# SIGTERM, up to 20 s to exit, then SIGKILL.
stop_started() {
    local i pid
    for ((i = ${#STARTED_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${STARTED_PIDS[i]}
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    STARTED_PIDS=()
}

# A link's clickCount through the API (KEY_OF, default $KEY); empty when it cannot be read.
count_of() { # base_url code [key]
    curl -sf --max-time 5 -H "Authorization: Bearer ${3:-$KEY}" "$1/api/links/$2" 2>/dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["clickCount"])' 2>/dev/null || true
}

# The count once it has stopped moving: first read after 1 s, then every 0.5 s until two reads
# agree (at most 6 s in all). Clicks answered just before the end are then stored.
settled_count() { # base_url code [key]
    local prev now
    sleep 1
    prev=$(count_of "$@")
    for _ in $(seq 10); do
        sleep 0.5
        now=$(count_of "$@")
        [ -n "$now" ] && [ "$now" = "$prev" ] && break
        prev=$now
    done
    echo "${now:-$prev}"
}

# Sum of linkpulse_clicks_dropped_total over its reasons, on one node.
dropped_of() { # base_url
    local metrics
    metrics=$(curl -sf --max-time 5 "$1/metrics" 2>/dev/null || true)
    awk '/^linkpulse_clicks_dropped_total/ {s += $2} END {printf "%d\n", s}' <<<"$metrics"
}

ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

# Median of the arguments (the mean of the middle two for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {
        if (NR == 0) print "-"; else if (NR % 2) printf "%.2f\n", a[(NR+1)/2];
        else printf "%.2f\n", (a[NR/2] + a[NR/2+1]) / 2 }'
}
