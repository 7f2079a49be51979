#!/usr/bin/env bash
# Sequential ping round trips with server and client both on CPU 0.
#   benches/tools/pinned-pings.sh BINDIR {socket|pipe|ws|grpc} [COUNT]
# BINDIR holds openiap-server and openiap-client (e.g. target/release).
# Prints the client's JSON line (pings_per_s). Used for the A/B rows in
# BENCHMARKS.md: run it for the old and the new binaries alternately.
set -euo pipefail
source "$(dirname "$0")/endpoint.sh"
bindir=$1; kind=$2; count=${3:-5000}
data=$(mktemp -d); port=$((51900 + RANDOM % 90))
endpoint "$kind" "$port"
taskset -c 0 "$bindir/openiap-server" "${args[@]}" --data "$data" --dev-password pw > "$data/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
wait_listening "$data/server.log"
taskset -c 0 "$bindir/openiap-client" --url "$url" --password pw --json ping --count "$count"
