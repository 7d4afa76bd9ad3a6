#!/usr/bin/env bash
# A local ACME server, to try linkpulse's certificates without a public name: Debian's
# `pebble` (apt install pebble), with `pebble-challtestsrv` answering every name with
# 127.0.0.1 so pebble's checks reach the linkpulse on this machine.
#
#   eval "$(deploy/pebble.sh start HTTP_PORT HTTPS_PORT)"   # linkpulse's two ports
#   deploy/pebble.sh stop
#
# `start` prints the variables to hand to linkpulse and to a client:
#   ACME_DIRECTORY    for --acme-directory (pebble on 127.0.0.1:14000)
#   ACME_CA_ROOT      for --acme-ca-root (the root of pebble's own HTTPS certificate)
#   ACME_ISSUER_ROOT  the root of the certificates pebble issues (curl --cacert)
# Everything lives in ${PEBBLE_DIR:-/tmp/linkpulse-pebble}; pebble issues certificates valid
# for ${PEBBLE_VALIDITY:-3600} seconds, so renewals show within the hour.
set -euo pipefail

dir=${PEBBLE_DIR:-/tmp/linkpulse-pebble}
case ${1-} in
start)
    http_port=${2:?usage: deploy/pebble.sh start HTTP_PORT HTTPS_PORT}
    https_port=${3:?usage: deploy/pebble.sh start HTTP_PORT HTTPS_PORT}
    command -v pebble >/dev/null || { echo "pebble is not installed (apt install pebble)" >&2; exit 1; }
    mkdir -p "$dir"
    cd "$dir"
    # Pebble's own HTTPS certificate, signed by a root of our own: linkpulse trusts that root.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -subj "/CN=pebble test root" -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout key.pem -out req.csr 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >ext.cnf
    openssl x509 -req -in req.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
        -extfile ext.cnf -out cert.pem 2>/dev/null
    cat >pebble.json <<JSON
{"pebble": {"listenAddress": "127.0.0.1:14000", "managementListenAddress": "127.0.0.1:15000",
  "certificate": "$dir/cert.pem", "privateKey": "$dir/key.pem",
  "httpPort": $http_port, "tlsPort": $https_port, "ocspResponderURL": "",
  "externalAccountBindingRequired": false,
  "certificateValidityPeriod": ${PEBBLE_VALIDITY:-3600}}}
JSON
    pebble-challtestsrv -dns01 127.0.0.1:18053 -http01 "" -https01 "" -tlsalpn01 "" \
        -defaultIPv6 "" -management 127.0.0.1:18055 >dns.log 2>&1 &
    echo $! >dns.pid
    PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 \
        pebble -config pebble.json -dnsserver 127.0.0.1:18053 >pebble.log 2>&1 &
    echo $! >pebble.pid
    for _ in $(seq 100); do
        curl -fsS --cacert ca.pem -o issuer.pem https://127.0.0.1:15000/roots/0 2>/dev/null && break
        sleep 0.1
    done
    [ -s issuer.pem ] || { echo "pebble did not start: see $dir/pebble.log" >&2; exit 1; }
    echo "ACME_DIRECTORY=https://127.0.0.1:14000/dir"
    echo "ACME_CA_ROOT=$dir/ca.pem"
    echo "ACME_ISSUER_ROOT=$dir/issuer.pem"
    ;;
stop)
    for pid in "$dir/pebble.pid" "$dir/dns.pid"; do
        [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
        rm -f "$pid"
    done
    ;;
*)
    echo "usage: deploy/pebble.sh start HTTP_PORT HTTPS_PORT | stop" >&2
    exit 2
    ;;
esac
