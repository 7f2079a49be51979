"""Medians of the A/B scripts' lines `GROUP... BINDIR VALUE` (VALUE `failed`
for a run that failed), per group and binary directory, in input order.
Exits 1 when any run failed, so a partial A/B is never taken for a whole one."""
import statistics
import sys

runs, failed = {}, {}
for line in sys.stdin:
    *key, value = line.split()
    key = tuple(key)
    runs.setdefault(key, [])
    if value == "failed":
        failed[key] = failed.get(key, 0) + 1
    else:
        runs[key].append(float(value))
for key, values in runs.items():
    median = round(statistics.median(values), 1) if values else "n/a"
    line = [*key, "median", median, "runs", [round(v) for v in values]]
    if key in failed:
        line += ["failed", failed[key]]
    print(*line)
sys.exit(1 if failed else 0)
