#!/usr/bin/env bash
# What a stalled disk costs: linkpulse on a small loop-mounted ext4 whose writes are frozen with
# `fsfreeze` (a real disk that stops answering) under wrk load. Prints the server's memory before
# and at the click-backlog bound, what /healthz and /metrics say, and, once the disk answers
# again, that every click admitted while it was frozen is counted exactly.
#
#   load-tests/stall.sh path/to/linkpulse [backlog] [seconds]
#
# Needs root (mount, fsfreeze), wrk and curl. Everything is on 127.0.0.1; wrk runs for a fixed
# time; every wait is bounded.
set -euo pipefail

BIN=${1:?usage: stall.sh LINKPULSE_BINARY [backlog] [seconds]}
BACKLOG=${2:-50000}
SECS=${3:-10}
KEY=lp_stall_key_0123456789abcdef
for tool in wrk curl jq mkfs.ext4 fsfreeze; do
    command -v "$tool" >/dev/null || { echo "missing $tool"; exit 1; }
done

TMP=$(mktemp -d)
MNT="$TMP/mnt"
mkdir "$MNT"
PID=
cleanup() {
    fsfreeze -u "$MNT" 2>/dev/null || true
    [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null || true
    umount "$MNT" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

truncate -s 256M "$TMP/disk.img"
mkfs.ext4 -q -F "$TMP/disk.img"
mount -o loop "$TMP/disk.img" "$MNT"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT
LINKPULSE_INITIAL_API_KEY=$KEY LINKPULSE_LOG=warn "$BIN" --listen "127.0.0.1:$PORT" \
    --data-dir "$MNT/data" --click-backlog "$BACKLOG" --shutdown-timeout 5s \
    >"$TMP/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -fs "$BASE/healthz" >/dev/null && break; sleep 0.1; done

curl -fs -H "Authorization: Bearer $KEY" -H 'content-type: application/json' \
    -d '{"url":"https://example.com/stalled","code":"stall"}' "$BASE/api/links" >/dev/null
curl -s -o /dev/null "$BASE/stall"   # the link's actor is live before the disk freezes
rss() { awk '/VmRSS/ {print $2 " kB"}' "/proc/$PID/status"; }
metric() { curl -fs "$BASE/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
echo "backlog limit:         $BACKLOG clicks"
echo "rss before:            $(rss)"

fsfreeze -f "$MNT"
# A 512-byte user agent: the largest click the redirect keeps.
UA=$(head -c 512 /dev/zero | tr '\0' 'u')
wrk -t1 -c64 -d"${SECS}s" -H "User-Agent: $UA" "$BASE/stall" >"$TMP/wrk.txt" 2>&1 || true
REQS=$(awk '/requests in/ {print $1}' "$TMP/wrk.txt")
NON302=$(awk '/Non-2xx or 3xx/ {print $5}' "$TMP/wrk.txt")
echo "redirects while frozen: ${REQS:-?} (non-3xx: ${NON302:-0})"
echo "rss at the bound:      $(rss) (peak $(awk '/VmHWM/ {print $2 " kB"}' "/proc/$PID/status"))"
# Nothing is committed while frozen: every click admitted since the freeze is in the backlog.
HELD=$(metric linkpulse_backlog_clicks)
echo "backlog clicks:        $HELD"
DROPPED=$(metric 'linkpulse_clicks_dropped_total{reason="backlog"}')
echo "dropped (backlog):     $DROPPED"
echo "healthz:               $(curl -s -w ' %{http_code}' "$BASE/healthz")"

fsfreeze -u "$MNT"
for _ in $(seq 300); do [ "$(metric linkpulse_backlog_clicks)" = 0 ] && break; sleep 0.1; done
COUNT=$(curl -fs -H "Authorization: Bearer $KEY" "$BASE/api/links/stall" | jq .clickCount)
ADMITTED=$(( HELD + 1 ))
echo "after the thaw:         count $COUNT, admitted $ADMITTED (the backlog + the first click)"
echo "healthz:               $(curl -s -w ' %{http_code}' "$BASE/healthz")"
kill -TERM "$PID"
for _ in $(seq 200); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
wait "$PID" && echo "stopped:               exit 0" || echo "stopped:               exit $?"
PID=
[ "$COUNT" = "$ADMITTED" ] || { echo "count check FAILED"; exit 1; }
echo "count check:           ok"
