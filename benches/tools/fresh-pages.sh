#!/usr/bin/env bash
# What writing into memory the guest has not used lately costs here.
#   benches/tools/fresh-pages.sh [DIR] [MIB] [ROUNDS]
# Copies a MIB file into DIR with dd + fsync, ROUNDS times in two ways:
#   recycled: each copy is removed before the next, whose page cache then
#             reuses the pages just freed;
#   kept:     every copy is kept, so each one needs pages the guest has not
#             used lately (on a VM that returns freed memory to the host,
#             virtio-balloon free page reporting, each is a host fault).
# Prints MiB/s per copy. See BENCHMARKS.md, "Latest run".
set -euo pipefail
dir=${1:-.}; mib=${2:-256}; rounds=${3:-5}
work=$(mktemp -d -p "$dir")
trap 'rm -rf "$work"' EXIT
head -c $((mib << 20)) /dev/urandom > "$work/source"
copy() {
  sync
  local s e
  s=$(date +%s%N)
  dd if="$work/source" of="$1" bs=1M conv=fsync status=none
  e=$(date +%s%N)
  echo "$2 $((mib * 1000000000 / (e - s))) MiB/s"
}
for i in $(seq "$rounds"); do copy "$work/recycled" recycled; rm -f "$work/recycled"; done
for i in $(seq "$rounds"); do copy "$work/kept.$i" kept; done
if [ -r /sys/module/page_reporting/parameters/min_free_ms ]; then
  for p in page_reporting_order min_free_ms max_waiting_mib; do
    echo "page_reporting $p: $(cat /sys/module/page_reporting/parameters/$p 2>/dev/null || echo n/a)"
  done
fi
