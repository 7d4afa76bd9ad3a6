#!/usr/bin/env bash
# A linkpulse cluster on this machine, for trying cluster mode:
# 3 nats-server processes (one JetStream cluster), 3 linkpulse nodes
# (a, b, c) and nginx in front (deploy/nginx-cluster.conf), all on
# 127.0.0.1 with free ports.
#
#   deploy/local-cluster.sh up [DIR]     start; DIR defaults to ./cluster
#   deploy/local-cluster.sh down [DIR]   stop what `up` started
#
# `up` prints on stdout, and nothing else there (progress goes to stderr):
#   nginx=127.0.0.1:PORT
#   node=a pid=PID addr=127.0.0.1:PORT     (and b, c)
#   key=lp_...                             (an admin API key)
# Logs, pids, data and DIR/cluster.env (the same facts, sourceable by a
# shell) are under DIR.
#
# The binary: $LINKPULSE_BIN, else ${CARGO_TARGET_DIR:-<repo>/target}/release/linkpulse.
# Needs nats-server, nginx, python3 and curl.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
TEMPLATE=$SCRIPT_DIR/nginx-cluster.conf
NODES=(a b c)
NATS_COUNT=3

log() { printf 'local-cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    cat >&2 <<'EOF'
usage: deploy/local-cluster.sh up [DIR]     start nats x3, linkpulse a/b/c, nginx
       deploy/local-cluster.sh down [DIR]   stop them (DIR defaults to ./cluster)
EOF
    exit 2
}

find_nginx() {
    if command -v nginx >/dev/null 2>&1; then
        command -v nginx
    elif [[ -x /usr/sbin/nginx ]]; then
        echo /usr/sbin/nginx
    else
        die "nginx not found (Debian: apt-get install nginx)"
    fi
}

find_nats() {
    if command -v nats-server >/dev/null 2>&1; then
        command -v nats-server
    elif [[ -x /usr/sbin/nats-server ]]; then
        echo /usr/sbin/nats-server
    else
        die "nats-server not found (Debian: apt-get install nats-server)"
    fi
}

find_linkpulse() {
    local bin
    if [[ -n ${LINKPULSE_BIN:-} ]]; then
        bin=$LINKPULSE_BIN
    else
        local target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
        # Cargo takes a relative CARGO_TARGET_DIR from the current directory.
        [[ $target == /* ]] || target=$PWD/$target
        bin=$target/release/linkpulse
    fi
    if [[ ! -x $bin ]]; then
        log "no linkpulse binary at $bin"
        log "build it first: (cd $REPO_ROOT && cargo build --release), or set LINKPULSE_BIN"
        exit 1
    fi
    [[ $bin == /* ]] || bin=$PWD/$bin
    echo "$bin"
}

# N free TCP ports on 127.0.0.1, one a line: all bound at once (port 0) so
# they differ, then released. Another program could take one in between;
# that is unlikely and shows up as a start-up failure.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
for s in socks:
    s.close()
EOF
}

# lp_ + 32 random alphanumerics.
new_key() {
    local chars
    # head closes the pipe early; tr's SIGPIPE is expected, so no pipefail here.
    chars=$(set +o pipefail; LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32)
    [[ ${#chars} -eq 32 ]] || die "could not read /dev/urandom"
    echo "lp_$chars"
}

# Start a command detached (own session, no terminal, SIGHUP ignored), its
# stdout and stderr to LOG; the process writes its own pid to PIDFILE, so
# the pid is right whether or not setsid has to fork. Prints the pid.
start_detached() {
    local pidfile=$1 logfile=$2
    shift 2
    rm -f "$pidfile"
    # shellcheck disable=SC2016 # $$ and $0 are expanded by the inner bash
    setsid nohup bash -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' \
        "$pidfile" "$@" >"$logfile" 2>&1 </dev/null &
    local i
    for ((i = 0; i < 100; i++)); do
        if [[ -s $pidfile ]]; then
            cat "$pidfile"
            return 0
        fi
        sleep 0.05
    done
    die "no pid from: $*"
}

# NAME='value', for DIR/cluster.env (a file a shell can source).
kv() { printf '%s=%s\n' "$1" "${2@Q}"; }

alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

# Whether PID is still one of ours: its command line names DIR. Guards
# against signalling an unrelated process that reused the pid.
ours() {
    local pid=$1 args
    alive "$pid" || return 1
    args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $args == *"$DIR"* ]]
}

# Wait up to SECONDS for PID to end, then SIGKILL it.
wait_gone() {
    local pid=$1 secs=$2 name=$3 i
    for ((i = 0; i < secs * 10; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    if ours "$pid"; then
        log "$name (pid $pid) still running after ${secs}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

# Send SIGNAL to PID if it is still ours; true if it was sent.
signal_pid() {
    local pid=$1 sig=$2 name=$3
    ours "$pid" || return 1
    log "stopping $name (pid $pid)"
    kill "-$sig" "$pid" 2>/dev/null
}

# Stop PID (if still ours) with SIGNAL, wait up to SECONDS, then SIGKILL.
stop_pid() {
    local pid=$1 sig=$2 secs=$3 name=$4
    if signal_pid "$pid" "$sig" "$name"; then
        wait_gone "$pid" "$secs" "$name"
    fi
}

# Wait until URL answers 200, while PID lives; SECONDS at most.
wait_http() {
    local url=$1 pid=$2 secs=$3 name=$4 logfile=$5 i
    for ((i = 0; i < secs * 5; i++)); do
        if ! alive "$pid"; then
            log "$name exited; the end of $logfile:"
            tail -n 20 "$logfile" >&2 || true
            return 1
        fi
        if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    log "$name not ready at $url after ${secs}s; the end of $logfile:"
    tail -n 20 "$logfile" >&2 || true
    return 1
}

# The address a linkpulse node logged (`linkpulse listening address=...`).
wait_listen_addr() {
    local logfile=$1 pid=$2 secs=$3 name=$4 i line
    for ((i = 0; i < secs * 5; i++)); do
        line=$(grep -a -m1 -o 'linkpulse listening address=[0-9.:]*' "$logfile" 2>/dev/null || true)
        if [[ -n $line ]]; then
            echo "${line##*address=}"
            return 0
        fi
        if ! alive "$pid"; then
            log "node $name exited; the end of $logfile:"
            tail -n 20 "$logfile" >&2 || true
            return 1
        fi
        sleep 0.2
    done
    log "node $name logged no listening address in ${secs}s; the end of $logfile:"
    tail -n 20 "$logfile" >&2 || true
    return 1
}

# Everything `up` started so far, stopped on failure.
STARTED_NGINX=""
STARTED_NODES=()
STARTED_NATS=()
cleanup_on_failure() {
    local rc=$? pid
    [[ $rc -ne 0 ]] || return 0
    log "start-up failed: stopping what was started (logs are kept under $DIR)"
    [[ -z $STARTED_NGINX ]] || stop_pid "$STARTED_NGINX" QUIT 15 nginx
    for pid in "${STARTED_NODES[@]}"; do stop_pid "$pid" TERM 15 linkpulse; done
    for pid in "${STARTED_NATS[@]}"; do stop_pid "$pid" TERM 10 nats-server; done
    exit "$rc"
}

# What `up` started under DIR, as KIND:PID lines (KIND: nginx, node-X,
# nats-N), from DIR/cluster.env and the pid files (so a failed or
# interrupted `up` is found too), each pid once, only those still ours.
our_pids() {
    local -a found=()
    local -A seen=()
    local name i pid entry
    if [[ -f $DIR/nginx.master.pid ]]; then found+=("nginx:$(<"$DIR/nginx.master.pid")"); fi
    for name in "${NODES[@]}"; do
        if [[ -f $DIR/node-$name.pid ]]; then found+=("node-$name:$(<"$DIR/node-$name.pid")"); fi
    done
    for ((i = 1; i <= NATS_COUNT; i++)); do
        if [[ -f $DIR/nats-$i.pid ]]; then found+=("nats-$i:$(<"$DIR/nats-$i.pid")"); fi
    done
    if [[ -f $DIR/cluster.env ]]; then
        # shellcheck disable=SC1091
        mapfile -t -O "${#found[@]}" found < <(
            source "$DIR/cluster.env"
            echo "nginx:${LP_NGINX_PID:-}"
            for pid in ${LP_NODE_PIDS:-}; do echo "node:$pid"; done
            for pid in ${LP_NATS_PIDS:-}; do echo "nats:$pid"; done
        )
    fi
    for entry in "${found[@]}"; do
        pid=${entry#*:}
        [[ $pid =~ ^[0-9]+$ ]] || continue
        [[ -z ${seen[$pid]:-} ]] || continue
        seen[$pid]=1
        if ours "$pid"; then echo "$entry"; fi
    done
}

cmd_up() {
    local bin nats nginx
    bin=$(find_linkpulse)
    nats=$(find_nats)
    nginx=$(find_nginx)
    command -v python3 >/dev/null || die "python3 is needed to find free ports"
    command -v curl >/dev/null || die "curl is needed to check health"
    [[ -f $TEMPLATE ]] || die "missing $TEMPLATE"

    mkdir -p "$DIR"
    DIR=$(cd "$DIR" && pwd)
    if [[ -n $(our_pids) ]]; then
        die "a cluster is already running under $DIR: run '$0 down $DIR' first"
    fi
    rm -f "$DIR/cluster.env"
    trap cleanup_on_failure EXIT

    # Ports: per nats-server client, cluster and monitoring; and nginx's.
    # The linkpulse nodes take port 0 and log the port they got.
    local ports
    mapfile -t ports < <(free_ports $((NATS_COUNT * 3 + 1)))
    [[ ${#ports[@]} -eq $((NATS_COUNT * 3 + 1)) ]] || die "could not find free ports"
    local -a client_port cluster_port http_port
    local i
    for ((i = 1; i <= NATS_COUNT; i++)); do
        client_port[i]=${ports[(i - 1) * 3]}
        cluster_port[i]=${ports[(i - 1) * 3 + 1]}
        http_port[i]=${ports[(i - 1) * 3 + 2]}
    done
    local nginx_addr=127.0.0.1:${ports[NATS_COUNT * 3]}

    local routes="" urls=""
    for ((i = 1; i <= NATS_COUNT; i++)); do
        routes+="${routes:+, }nats-route://127.0.0.1:${cluster_port[i]}"
        urls+="${urls:+,}nats://127.0.0.1:${client_port[i]}"
    done

    # NATS: one JetStream cluster named lp.
    local -a nats_pid
    for ((i = 1; i <= NATS_COUNT; i++)); do
        mkdir -p "$DIR/nats-$i"
        cat >"$DIR/nats-$i.conf" <<EOF
# Written by deploy/local-cluster.sh
server_name: lp-nats-$i
listen: 127.0.0.1:${client_port[i]}
http: 127.0.0.1:${http_port[i]}
jetstream {
  store_dir: "$DIR/nats-$i"
}
cluster {
  name: lp
  listen: 127.0.0.1:${cluster_port[i]}
  routes: [$routes]
}
EOF
        nats_pid[i]=$(start_detached "$DIR/nats-$i.pid" "$DIR/nats-$i.log" \
            "$nats" -c "$DIR/nats-$i.conf")
        STARTED_NATS+=("${nats_pid[i]}")
        log "nats-server $i: pid ${nats_pid[i]}, client 127.0.0.1:${client_port[i]}"
    done
    # /healthz answers 200 once JetStream has a meta leader (the cluster formed).
    for ((i = 1; i <= NATS_COUNT; i++)); do
        wait_http "http://127.0.0.1:${http_port[i]}/healthz" "${nats_pid[i]}" 60 \
            "nats-server $i" "$DIR/nats-$i.log"
    done
    log "JetStream cluster ready"

    # linkpulse: node a first (it creates the streams and buckets), then b, c.
    # Each takes a free port (port 0) and logs it. --base-url makes short
    # URLs point at nginx; --trust-forwarded-for takes the client address
    # from nginx's X-Forwarded-For (else every client is nginx's address,
    # and per-client limits would apply to all clients together).
    local key
    key=$(new_key)
    local -A node_pid node_addr
    local name
    for name in "${NODES[@]}"; do
        mkdir -p "$DIR/node-$name"
        node_pid[$name]=$(start_detached "$DIR/node-$name.pid" "$DIR/node-$name.log" \
            "$bin" serve \
            --nats "$urls" \
            --nats-replicas 3 \
            --listen 127.0.0.1:0 \
            --data-dir "$DIR/node-$name" \
            --base-url "http://$nginx_addr" \
            --initial-api-key "$key" \
            --trust-forwarded-for \
            --log-format text)
        STARTED_NODES+=("${node_pid[$name]}")
        log "linkpulse $name: pid ${node_pid[$name]}"
        if [[ $name == "${NODES[0]}" ]]; then
            # Streams are made at start-up: wait for a before starting the others.
            node_addr[$name]=$(wait_listen_addr "$DIR/node-$name.log" "${node_pid[$name]}" 120 "$name")
            wait_http "http://${node_addr[$name]}/healthz" "${node_pid[$name]}" 120 \
                "linkpulse $name" "$DIR/node-$name.log"
            log "linkpulse $name: healthy at ${node_addr[$name]}"
        fi
    done
    for name in "${NODES[@]:1}"; do
        node_addr[$name]=$(wait_listen_addr "$DIR/node-$name.log" "${node_pid[$name]}" 120 "$name")
        wait_http "http://${node_addr[$name]}/healthz" "${node_pid[$name]}" 120 \
            "linkpulse $name" "$DIR/node-$name.log"
        log "linkpulse $name: healthy at ${node_addr[$name]}"
    done

    # nginx, from the template.
    local prefix=$DIR/nginx servers="" conf
    mkdir -p "$prefix"
    for name in "${NODES[@]}"; do
        servers+="${servers:+$'\n        '}server ${node_addr[$name]} max_fails=1 fail_timeout=2s;"
    done
    conf=$(<"$TEMPLATE")
    conf=${conf//@PREFIX@/"$prefix"}
    conf=${conf//@LISTEN@/"$nginx_addr"}
    conf=${conf//@SERVERS@/"$servers"}
    printf '%s\n' "$conf" >"$prefix/nginx.conf"
    "$nginx" -t -q -p "$prefix" -c "$prefix/nginx.conf" >"$DIR/nginx-test.log" 2>&1 || {
        cat "$DIR/nginx-test.log" >&2
        die "nginx rejected $prefix/nginx.conf"
    }
    local nginx_pid
    nginx_pid=$(start_detached "$DIR/nginx.master.pid" "$DIR/nginx.log" \
        "$nginx" -p "$prefix" -c "$prefix/nginx.conf" -g 'daemon off;')
    STARTED_NGINX=$nginx_pid
    wait_http "http://$nginx_addr/healthz" "$nginx_pid" 30 nginx "$prefix/error.log"
    log "nginx: pid $nginx_pid at $nginx_addr"

    {
        echo "# Written by deploy/local-cluster.sh up; read by down. Source it in a shell."
        kv LP_DIR "$DIR"
        kv LP_NGINX "$nginx_addr"
        kv LP_NGINX_PID "$nginx_pid"
        kv LP_NGINX_PREFIX "$prefix"
        for name in "${NODES[@]}"; do
            kv "LP_NODE_${name^^}_PID" "${node_pid[$name]}"
            kv "LP_NODE_${name^^}_ADDR" "${node_addr[$name]}"
        done
        local all_nodes=""
        for name in "${NODES[@]}"; do all_nodes+="${all_nodes:+ }${node_pid[$name]}"; done
        kv LP_NODE_PIDS "$all_nodes"
        kv LP_NATS_URLS "$urls"
        kv LP_NATS_PIDS "${nats_pid[*]}"
        for ((i = 1; i <= NATS_COUNT; i++)); do
            kv "LP_NATS_${i}_PID" "${nats_pid[i]}"
            kv "LP_NATS_${i}_MONITOR" "http://127.0.0.1:${http_port[i]}"
        done
        kv LP_KEY "$key"
    } >"$DIR/cluster.env.tmp"
    mv "$DIR/cluster.env.tmp" "$DIR/cluster.env"
    trap - EXIT

    echo "nginx=$nginx_addr"
    for name in "${NODES[@]}"; do
        echo "node=$name pid=${node_pid[$name]} addr=${node_addr[$name]}"
    done
    echo "key=$key"
    log "up; stop with: $0 down $DIR"
}

cmd_down() {
    if [[ ! -d $DIR ]]; then
        log "nothing under $DIR: already down"
        return 0
    fi
    DIR=$(cd "$DIR" && pwd)
    local -a entries=() nodes=()
    local entry
    mapfile -t entries < <(our_pids)
    # In order: nginx (no new requests), the nodes (they finish and flush
    # to NATS within their --shutdown-timeout, 10s), then the NATS servers.
    for entry in "${entries[@]}"; do
        if [[ $entry == nginx:* ]]; then stop_pid "${entry#*:}" QUIT 15 "${entry%%:*}"; fi
    done
    # The nodes (and then the NATS servers) are signalled together, then
    # each is waited for.
    for entry in "${entries[@]}"; do
        if [[ $entry == node* ]] && signal_pid "${entry#*:}" TERM "${entry%%:*}"; then
            nodes+=("$entry")
        fi
    done
    for entry in "${nodes[@]}"; do wait_gone "${entry#*:}" 20 "${entry%%:*}"; done
    local -a servers=()
    for entry in "${entries[@]}"; do
        if [[ $entry == nats* ]] && signal_pid "${entry#*:}" TERM "${entry%%:*}"; then
            servers+=("$entry")
        fi
    done
    for entry in "${servers[@]}"; do wait_gone "${entry#*:}" 15 "${entry%%:*}"; done
    if [[ ${#entries[@]} -eq 0 ]]; then log "nothing running under $DIR: already down"; fi
    rm -f "$DIR/cluster.env" "$DIR"/*.pid
    log "down (data and logs are kept under $DIR)"
}

[[ $# -ge 1 && $# -le 2 ]] || usage
DIR=${2:-./cluster}
case $1 in
up) cmd_up ;;
down) cmd_down ;;
*) usage ;;
esac
