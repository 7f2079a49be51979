#!/usr/bin/env bash
# Transfer A/B: `openiap-client bench --size-mib 256` with a fresh server per
# run, old and new binaries alternated, medians.
#   benches/tools/ab-transfers.sh {socket|pipe|ws|grpc} REPS SCRATCH BINDIR_A BINDIR_B [...]
# SCRATCH is a directory on the disk to measure (the servers' data goes there).
# A run that fails is counted and shown (its cause on stderr); the script
# then exits 1.
set -euo pipefail
here=$(dirname "$0")
source "$here/endpoint.sh"
kind=$1; reps=$2; scratch=$3; shift 3
for _ in $(seq "$reps"); do for bindir in "$@"; do
  endpoint "$kind" $((52100 + RANDOM % 90))
  data=$(mktemp -d -p "$scratch")
  "$bindir/openiap-server" "${args[@]}" --data "$data/srv" --dev-password pw > "$data/log" 2>&1 &
  server=$!
  if wait_listening "$data/log" && sync &&
    report=$("$bindir/openiap-client" --url "$url" --password pw --json bench --size-mib 256 --pings 10) &&
    rows=$(python3 -c '
import json, sys
for key, value in json.load(sys.stdin).items():
    if key.endswith("mib_per_s"):
        print(key, value)' <<< "$report"); then
    sed "s|^\([^ ]*\) |\1 $bindir |" <<< "$rows"
  else
    for key in upload_mib_per_s download_mib_per_s; do echo "$key $bindir failed"; done
  fi
  kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$data"
done; done | python3 "$here/medians.py"
