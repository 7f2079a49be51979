#!/usr/bin/env bash
# Instructions per ping, client and server each under callgrind (counts
# repeat exactly from run to run, whatever else the machine does).
#   benches/tools/callgrind-pings.sh BINDIR {socket|pipe|ws|grpc} [COUNT]
# Two rounds, each with a fresh server (one worker thread) and one client:
# `ping --count 1`, then `ping --count COUNT`. Each side's figure is
# (Ir of the COUNT round - Ir of the 1 round) / (COUNT - 1), so start-up,
# signin and shutdown cancel out.
set -euo pipefail
source "$(dirname "$0")/endpoint.sh"
bindir=$1; kind=$2; count=${3:-3000}
out=$(mktemp -d)
for n in 1 "$count"; do
  port=$((52900 + RANDOM % 90))
  endpoint "$kind" "$port"
  valgrind --tool=callgrind --callgrind-out-file="$out/server-$n.out" "$bindir/openiap-server" \
    --worker-threads 1 "${args[@]}" --data "$out/data-$n" --dev-password pw > "$out/server-$n.log" 2>&1 &
  wait_listening "$out/server-$n.log" 150 0.2
  valgrind --tool=callgrind --callgrind-out-file="$out/client-$n.out" "$bindir/openiap-client" \
    --url "$url" --password pw --json ping --count "$n" > /dev/null 2>&1
  sleep 1
  pkill -INT -f "callgrind-out-file=$out/server-$n.out" || true
  for _ in $(seq 50); do grep -q "^summary:" "$out/server-$n.out" 2>/dev/null && break; sleep 0.2; done
done
total() { grep -h "^summary:" "$1" | awk '{print $2}'; }
per_ping() { echo $(( ($(total "$out/$1-$count.out") - $(total "$out/$1-1.out")) / (count - 1) )); }
echo "$bindir $kind: client $(per_ping client) Ir per ping; server $(per_ping server) Ir per ping"
echo "profiles: $out (callgrind_annotate FILE)"
