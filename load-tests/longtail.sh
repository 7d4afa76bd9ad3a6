#!/usr/bin/env bash
# The long tail on one node with default settings: [codes] links made by `linkpulse import` (a
# CSV of url,code), the server started on them, every code clicked once (linkpulse-load
# distinct --no-create), then, on the same server in the same run, [wide] codes clicked at
# random for reference (linkpulse-load redirect), the rate a busy shortener's working set gets:
#
#   load-tests/longtail.sh [codes] [concurrency] [wide]
#
# Prints the server's resident memory right after its start, its peak (VmHWM) at the end of the
# long tail and at the end of the run,
# both click rates and their ratio, and the sum of clickCount over the long tail. Exits 1 if a
# click was not counted.
#
# Needs curl, python3 and a release build of the workspace (linkpulse and linkpulse-load).
# Everything is on 127.0.0.1; each phase is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

NCODES=${1:-1000000}
CONC=${2:-64}
WIDE=${3:-10000}
BIN=$(realpath "${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}")
LOAD=$(realpath "${LINKPULSE_LOAD_BIN:-$(dirname "$BIN")/linkpulse-load}")
TMP=$(mktemp -d)
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
[ -x "$BIN" ] || { echo "no release binary at $BIN (cargo build --release)"; exit 1; }
[ -x "$LOAD" ] || { echo "no linkpulse-load at $LOAD (cargo build --release --workspace)"; exit 1; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT

python3 - "$NCODES" > "$TMP/links.csv" <<'EOF'
import sys
print("url,code")
for i in range(1, int(sys.argv[1]) + 1):
    print(f"https://example.com/t/{i},d{i:07d}")
EOF
KEY=$("$BIN" keys create --admin --data-dir "$TMP/data" 2>/dev/null | grep -o 'lp_[A-Za-z0-9_]*' | head -1)
"$BIN" import --data-dir "$TMP/data" --input "$TMP/links.csv" 2>/dev/null
rm "$TMP/links.csv"

LINKPULSE_CREATE_RATE_PER_KEY=0 LINKPULSE_MAX_CONNECTIONS_PER_CLIENT=0 \
    "$BIN" --listen "127.0.0.1:$PORT" --data-dir "$TMP/data" >"$TMP/server.log" 2>&1 &
PID=$!
started=$(date +%s.%N)
for _ in $(seq 600); do curl -sf -o /dev/null "$BASE/healthz" && break; sleep 0.05; done
ready=$(date +%s.%N)
rss_kib() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$PID/status"; }
echo "start: /healthz after $(python3 -c "print(f'{$ready - $started:.2f}')") s, resident $(( $(rss_kib VmRSS) / 1024 )) MiB"

echo "== $NCODES distinct codes, clicked once each"
"$LOAD" --base-url "$BASE" --key "$KEY" --server-pid "$PID" distinct --codes "$NCODES" \
    --concurrency "$CONC" --no-create --sample-every 10 | tee "$TMP/distinct.txt"
tail_peak=$(( $(rss_kib VmHWM) / 1024 ))
echo "== $WIDE codes clicked at random (reference)"
"$LOAD" --base-url "$BASE" --key "$KEY" --server-pid "$PID" redirect --codes "$WIDE" \
    --requests $((WIDE * 60)) --connections "$CONC" --pick random --prefix w | tee "$TMP/wide.txt"
"$LOAD" --base-url "$BASE" --key "$KEY" counts --codes "$NCODES" --prefix d | tee "$TMP/counts.txt"

tail_rate=$(sed -n 's/^click time: .*(\([0-9]*\)\/s)$/\1/p' "$TMP/distinct.txt")
wide_rate=$(sed -n 's/^throughput: *\([0-9]*\)\/s$/\1/p' "$TMP/wide.txt")
sum=$(awk -F': *' '$1 == "sum of clickCount" {print $2}' "$TMP/counts.txt")
echo "== summary"
echo "server peak resident (VmHWM) through the long tail: $tail_peak MiB; after the reference: $(( $(rss_kib VmHWM) / 1024 )) MiB"
echo "long tail: $tail_rate clicks/s; $WIDE codes: $wide_rate/s; ratio $(python3 -c "print(f'{$tail_rate / $wide_rate:.2f}')")"
echo "sum of clickCount over the long tail: $sum of $NCODES"
[ "$sum" = "$NCODES" ] || { echo "FAIL: not every click was counted"; exit 1; }
