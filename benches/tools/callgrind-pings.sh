#!/usr/bin/env bash
# Instructions per ping, client and server each under callgrind (counts
# repeat exactly from run to run, whatever else the machine does).
#   benches/tools/callgrind-pings.sh BINDIR {socket|pipe|ws|grpc} [COUNT]
# The client's figure is (Ir of `ping --count COUNT` - Ir of `--count 1`)
# / (COUNT - 1); the server's is its total over both clients (start-up, two
# signins and COUNT + 1 pings), server on one worker thread.
set -euo pipefail
source "$(dirname "$0")/endpoint.sh"
bindir=$1; kind=$2; count=${3:-3000}
out=$(mktemp -d); port=$((52900 + RANDOM % 90))
endpoint "$kind" "$port"
valgrind --tool=callgrind --callgrind-out-file="$out/server.out" "$bindir/openiap-server" \
  --worker-threads 1 "${args[@]}" --data "$out/data" --dev-password pw > "$out/server.log" 2>&1 &
for _ in $(seq 150); do grep -q listening "$out/server.log" && break; sleep 0.2; done
for n in 1 "$count"; do
  valgrind --tool=callgrind --callgrind-out-file="$out/client-$n.out" "$bindir/openiap-client" \
    --url "$url" --password pw --json ping --count "$n" > /dev/null 2>&1
done
sleep 1
pkill -INT -f "callgrind-out-file=$out/server.out" || true
for _ in $(seq 50); do grep -q "^summary:" "$out/server.out" 2>/dev/null && break; sleep 0.2; done
total() { grep -h "^summary:" "$1" | awk '{print $2}'; }
c1=$(total "$out/client-1.out"); cn=$(total "$out/client-$count.out")
echo "$bindir $kind: client $(( (cn - c1) / (count - 1) )) Ir per ping; server $(total "$out/server.out") Ir in all"
echo "profiles: $out (callgrind_annotate FILE)"
