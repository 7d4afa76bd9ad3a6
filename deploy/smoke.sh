#!/usr/bin/env bash
# A smoke run of deploy/local-cluster.sh as a user would try it (.ci/run runs it): up, make a
# link through nginx, click it, read its count through nginx and on every node, watch it on a
# node, kill -9 the node nginx sends the code to, click on, read again, down.
#
#   deploy/smoke.sh [LINKPULSE_BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
export LINKPULSE_BIN=${1:-${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}}
DIR=$(mktemp -d)
trap 'deploy/local-cluster.sh down "$DIR" >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT

OUT=$(deploy/local-cluster.sh up "$DIR")
echo "$OUT"
NGINX=$(sed -n 's/^nginx=//p' <<<"$OUT")
KEY=$(sed -n 's/^key=//p' <<<"$OUT")
mapfile -t NODES < <(sed -n 's/^node=.* addr=//p' <<<"$OUT")
mapfile -t PIDS < <(sed -n 's/^node=.* pid=\([0-9]*\) .*/\1/p' <<<"$OUT")
[ "${#NODES[@]}" -eq 3 ] || { echo "FAIL: 3 node lines expected"; exit 1; }
if [ -z "$NGINX" ] || [ -z "$KEY" ]; then echo "FAIL: nginx= and key= lines expected"; exit 1; fi

count() { curl -sf -H "Authorization: Bearer $KEY" "http://$1/api/links/smoke" | python3 -c 'import json,sys; print(json.load(sys.stdin)["clickCount"])'; }
clicks() {
    local n=0
    for _ in $(seq "$1"); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$NGINX/smoke")" = 302 ] && n=$((n + 1))
    done
    echo "$n"
}

status=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' "http://$NGINX/api/links" \
    -d '{"url":"https://example.com/smoke","code":"smoke"}')
[ "$status" = 201 ] || { echo "FAIL: create answered $status"; exit 1; }

# A viewer on the first node, whichever node counts the code.
timeout 20 curl -sN "http://${NODES[0]}/realtime/smoke" >"$DIR/viewer.txt" &
VIEWER=$!
sleep 0.5
first=$(clicks 20)
[ "$first" = 20 ] || { echo "FAIL: $first of 20 clicks answered 302"; exit 1; }
sleep 0.5
for addr in "$NGINX" "${NODES[@]}"; do
    got=$(count "$addr")
    [ "$got" = 20 ] || { echo "FAIL: count $got through $addr, 20 expected"; exit 1; }
done

# The node nginx sends `smoke` to, from its access log; killed as a crash would.
home=$(sed -n 's/.*code="smoke" upstream="\([0-9.:]*\)".*/\1/p' "$DIR"/nginx/access.log | tail -1)
victim=""
for i in 0 1 2; do [ "${NODES[$i]}" = "$home" ] && victim=${PIDS[$i]}; done
[ -n "$victim" ] || { echo "FAIL: no node answered for smoke in nginx's log"; exit 1; }
kill -9 "$victim"
second=$(clicks 20)
[ "$second" = 20 ] || { echo "FAIL: $second of 20 clicks answered 302 after kill -9 of $home"; exit 1; }
sleep 0.5
got=$(count "$NGINX")
[ "$got" = 40 ] || { echo "FAIL: count $got after the node's death, 40 expected"; exit 1; }

kill "$VIEWER" 2>/dev/null || true
wait "$VIEWER" 2>/dev/null || true
last=$(grep -o '"clickCount":[0-9]*' "$DIR/viewer.txt" | tail -1 | cut -d: -f2)
echo "viewer on ${NODES[0]} last saw clickCount=${last:-none}"
if [ -z "$last" ] || [ "$last" -lt 20 ]; then echo "FAIL: the viewer saw no count up to 20"; exit 1; fi
deploy/local-cluster.sh down "$DIR" >/dev/null
echo "OK: 40 clicks counted through nginx and on every node; kill -9 of $home lost none"
