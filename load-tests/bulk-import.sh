#!/usr/bin/env bash
# Links made in bulk, two ways, in one run on the same machine:
#
#   load-tests/bulk-import.sh [links] [concurrency] [format]
#
# 1. A fresh server; [links] links (default 100,000) created through `POST /api/links/bulk`,
#    1,000 a request, [concurrency] requests at once (default 4); prints links/s. Every item
#    must answer 201, and a sample of the codes must redirect.
# 2. The same number of rows as an export of another shortener ([format]: shlink (default),
#    bitly, yourls or kutt (CSV)), imported by `linkpulse import --format [format]` on a stopped
#    data directory; prints its seconds and links/s, and the ratio of the two rates.
#
# Needs curl, python3 and a release build (`linkpulse` in ${CARGO_TARGET_DIR:-target}/release,
# or LINKPULSE_BIN). Everything is on 127.0.0.1 under a temporary directory removed at the end;
# the server is stopped by an exit trap. Nothing about timing is asserted.
set -euo pipefail
cd "$(dirname "$0")/.."

NLINKS=${1:-100000}
CONC=${2:-4}
FORMAT=${3:-shlink}
BIN=$(realpath "${LINKPULSE_BIN:-${CARGO_TARGET_DIR:-target}/release/linkpulse}")
KEY=lp_bulk_import_key_0123456789
TMP=$(mktemp -d)
PID=
cleanup() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
[ -x "$BIN" ] || { echo "no release binary at $BIN (cargo build --release)"; exit 1; }
case $FORMAT in shlink | bitly | yourls | kutt) ;; *) echo "format: shlink, bitly, yourls or kutt"; exit 2 ;; esac
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT

echo "== $NLINKS links through POST /api/links/bulk, 1000 a request, $CONC at once"
LINKPULSE_INITIAL_API_KEY=$KEY LINKPULSE_LOG=warn \
    "$BIN" --listen "127.0.0.1:$PORT" --data-dir "$TMP/api" >"$TMP/server.log" 2>&1 &
PID=$!
for _ in $(seq 600); do curl -sf -o /dev/null "$BASE/healthz" && break; sleep 0.05; done
curl -sf -o /dev/null "$BASE/healthz" || { echo "the server did not start:"; tail -5 "$TMP/server.log"; exit 1; }

api_rate=$(timeout 1800 python3 - "$BASE" "$KEY" "$NLINKS" "$CONC" <<'EOF'
import http.client, json, sys, threading, time, urllib.parse

base, key, total, conc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
host = urllib.parse.urlparse(base).netloc
batches = [list(range(start, min(start + 1000, total))) for start in range(0, total, 1000)]
lock = threading.Lock()
failed = []

def worker():
    conn = http.client.HTTPConnection(host, timeout=120)
    while True:
        with lock:
            if not batches:
                break
            batch = batches.pop()
        body = json.dumps({"links": [
            {"url": f"https://example.com/bulk/{i}", "code": f"bk{i:07d}",
             "title": f"Bulk link {i}", "tags": ["bulk", f"b{i // 1000}"]}
            for i in batch]})
        conn.request("POST", "/api/links/bulk", body,
                     {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        res = conn.getresponse()
        answer = res.read()
        if res.status != 200:
            with lock:
                failed.append(f"HTTP {res.status}: {answer[:200]!r}")
            continue
        bad = [r for r in json.loads(answer)["results"] if r["status"] != 201]
        if bad:
            with lock:
                failed.append(f"{len(bad)} items not created, first: {bad[0]}")

started = time.monotonic()
threads = [threading.Thread(target=worker) for _ in range(conc)]
for t in threads:
    t.start()
for t in threads:
    t.join()
took = time.monotonic() - started
if failed:
    print("\n".join(failed[:5]), file=sys.stderr)
    sys.exit(1)
print(f"{total} links in {took:.2f} s: {total / took:.0f} links/s", file=sys.stderr)
print(f"{total / took:.0f}")
EOF
)
for i in 0 $((NLINKS / 2)) $((NLINKS - 1)); do
    code=$(printf 'bk%07d' "$i")
    status=$(curl -s -o /dev/null -w '%{http_code}' "$BASE/$code")
    [ "$status" = 302 ] || { echo "FAIL: /$code answered $status"; exit 1; }
done
kill "$PID"; wait "$PID" 2>/dev/null || true
PID=

echo "== $NLINKS rows of a $FORMAT export through linkpulse import --format $FORMAT"
python3 - "$FORMAT" "$NLINKS" > "$TMP/export" <<'EOF'
import csv, sys

fmt, total = sys.argv[1], int(sys.argv[2])
w = csv.writer(sys.stdout, lineterminator="\n")
heads = {
    "shlink": ["createdAt", "domain", "shortCode", "shortUrl", "longUrl", "title", "tags", "visits"],
    "bitly": ["id", "link", "custom_bitlinks", "long_url", "title", "tags", "created_at", "clicks"],
    "yourls": ["keyword", "url", "title", "timestamp", "ip", "clicks"],
    "kutt": ["address", "target", "description", "created_at", "visit_count"],
}
w.writerow(heads[fmt])
for i in range(total):
    code, url, title = f"im{i:07d}", f"https://example.com/import/{i}", f"Imported, number {i}"
    row = {
        "shlink": ["2024-01-02T03:04:05+00:00", "s.example.com", code, f"https://s.example.com/{code}",
                   url, title, f"import|i{i // 1000}", i % 500],
        "bitly": [f"bit.ly/{code}", f"https://bit.ly/{code}", "", url, title, "import",
                  "2024-01-02T03:04:05+0000", i % 500],
        "yourls": [code, url, title, "2024-01-02 03:04:05", "203.0.113.1", i % 500],
        "kutt": [code, url, title, "2024-01-02T03:04:05.000Z", i % 500],
    }[fmt]
    w.writerow(row)
EOF
"$BIN" keys create --admin --name bench --data-dir "$TMP/cli" >/dev/null 2>&1
started=$(date +%s.%N)
LINKPULSE_LOG=warn "$BIN" import --format "$FORMAT" --data-dir "$TMP/cli" "$TMP/export" | head -1
took=$(python3 -c "import time; print(f'{time.time() - $started:.2f}')")
cli_rate=$(python3 -c "print(f'{$NLINKS / $took:.0f}')")
echo "import of $NLINKS rows: $took s, $cli_rate links/s"

echo "== summary"
echo "bulk API: $api_rate links/s; linkpulse import: $cli_rate links/s; API / import: $(python3 -c "print(f'{$api_rate / $cli_rate:.2f}')")"
