#!/usr/bin/env bash
# Pinned ping A/B: old and new binaries alternated, medians per transport.
#   benches/tools/ab-pings.sh "pipe ws grpc" REPS COUNT BINDIR_A BINDIR_B [...]
# Each BINDIR holds openiap-server and openiap-client; every run is
# pinned-pings.sh (both processes on CPU 0, a fresh server).
set -euo pipefail
here=$(dirname "$0")
kinds=$1; reps=$2; count=$3; shift 3
for kind in $kinds; do for _ in $(seq "$reps"); do for bindir in "$@"; do
  rate=$("$here/pinned-pings.sh" "$bindir" "$kind" "$count" |
    python3 -c 'import json, sys; print(round(json.load(sys.stdin)["pings_per_s"]))')
  echo "$kind $bindir $rate"
done; done; done | python3 -c '
import statistics, sys
runs = {}
for line in sys.stdin:
    kind, bindir, rate = line.split()
    runs.setdefault((kind, bindir), []).append(int(rate))
for (kind, bindir), rates in sorted(runs.items()):
    print(kind, bindir, "median", statistics.median(rates), "runs", rates)
'
