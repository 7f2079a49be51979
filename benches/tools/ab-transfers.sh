#!/usr/bin/env bash
# Transfer A/B: `openiap-client bench --size-mib 256` with a fresh server per
# run, old and new binaries alternated, medians.
#   benches/tools/ab-transfers.sh {socket|pipe|ws|grpc} REPS SCRATCH BINDIR_A BINDIR_B [...]
# SCRATCH is a directory on the disk to measure (the servers' data goes there).
set -euo pipefail
source "$(dirname "$0")/endpoint.sh"
kind=$1; reps=$2; scratch=$3; shift 3
for _ in $(seq "$reps"); do for bindir in "$@"; do
  endpoint "$kind" $((52100 + RANDOM % 90))
  data=$(mktemp -d -p "$scratch")
  "$bindir/openiap-server" "${args[@]}" --data "$data/srv" --dev-password pw > "$data/log" 2>&1 &
  server=$!
  wait_listening "$data/log"
  sync
  report=$("$bindir/openiap-client" --url "$url" --password pw --json bench --size-mib 256 --pings 10)
  kill $server; wait $server 2>/dev/null || true; rm -rf "$data"
  echo "$bindir $report"
done; done | python3 -c '
import json, statistics, sys
runs = {}
for line in sys.stdin:
    bindir, report = line.split(" ", 1)
    for key, value in json.loads(report).items():
        if key.endswith("mib_per_s"):
            runs.setdefault((key, bindir), []).append(value)
for (key, bindir), values in sorted(runs.items()):
    print(key, bindir, "median", round(statistics.median(values), 1), [round(v) for v in values])
'
