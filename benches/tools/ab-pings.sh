#!/usr/bin/env bash
# Pinned ping A/B: old and new binaries alternated, medians per transport.
#   benches/tools/ab-pings.sh "pipe ws grpc" REPS COUNT BINDIR_A BINDIR_B [...]
# Each BINDIR holds openiap-server and openiap-client; every run is
# pinned-pings.sh (both processes on CPU 0, a fresh server). A run that
# fails is counted and shown (its cause on stderr); the script then exits 1.
set -euo pipefail
here=$(dirname "$0")
kinds=$1; reps=$2; count=$3; shift 3
for kind in $kinds; do for _ in $(seq "$reps"); do for bindir in "$@"; do
  if report=$("$here/pinned-pings.sh" "$bindir" "$kind" "$count") &&
    rate=$(python3 -c 'import json, sys; print(round(json.load(sys.stdin)["pings_per_s"]))' <<< "$report"); then
    echo "$kind $bindir $rate"
  else
    echo "$kind $bindir failed"
  fi
done; done; done | python3 "$here/medians.py"
