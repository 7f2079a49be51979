#!/usr/bin/env bash
# Proves node-server.js and node-client.js against each other on every transport, on loopback.
#
#   bash tests/interop/selftest.sh            # from anywhere
#
# Environment (all optional):
#   INTEROP_BASE_PORT  first of three TCP ports used (socket, ws, grpc); default 47311
#   INTEROP_SIZE       bytes uploaded and downloaded; default 1048576 (1 MiB)
#   INTEROP_PINGS      pings per run; default 3
#   INTEROP_TRANSPORTS space-separated subset of "socket pipe ws grpc"; default all four
#
# Prints the client's JSON lines per transport, then "PASS <transport>" or "FAIL <transport>",
# and ends with "N passed, N failed". Exit status 0 only if every transport passed.
set -u

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here" || exit 1

base_port="${INTEROP_BASE_PORT:-47311}"
size="${INTEROP_SIZE:-1048576}"
pings="${INTEROP_PINGS:-3}"
transports="${INTEROP_TRANSPORTS:-socket pipe ws grpc}"
password="selftest-$$"
pipe_name="openiap-wire-selftest-$$"

if [ ! -d node_modules/@openiap/nodeapi ]; then
  echo "selftest: node_modules missing, running npm ci"
  npm ci --no-audit --no-fund >&2 || { echo "selftest: npm ci failed"; exit 1; }
fi

# Known answers for the content generator, taken from shared/vectors (BeginStream checksums).
node -e '
const c = require("./common");
const cases = [
  [314573, 0x5eed + 314573, "26dd18c04ae197064a5ddc19263bb98fa4096e93d3808401f1dc83776eeead79"],
  [314573, 314573, "7b58638a6dbbc9d55c26874b1d2c11bf9812e5cae1495a380d98a4d44a0520e0"],
];
for (const [size, seed, want] of cases) {
  const got = c.sha256hex(c.genBytes(size, seed));
  if (got !== want) { console.error(`genBytes(${size}, ${seed}) sha256 ${got}, expected ${want}`); process.exit(1); }
}
' || { echo "FAIL genBytes known answers"; echo "0 passed, 1 failed"; exit 1; }
echo "PASS genBytes known answers"

scratch="$(mktemp -d "${TMPDIR:-/tmp}/openiap-interop-selftest.XXXXXX")"
server_pid=""

stop_server() {
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null
    for _ in $(seq 1 50); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
    server_pid=""
  fi
}
cleanup() {
  stop_server
  rm -rf "$scratch"
  rm -f "/tmp/CoreFxPipe_${pipe_name}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run_one TRANSPORT PORT -> 0 on pass
run_one() {
  local transport="$1" port="$2"
  local out="$scratch/$transport.server.out" err="$scratch/$transport.server.err"
  local data="$scratch/$transport.data"
  local args=(--transport "$transport" --data "$data" --password "$password" --lifetime 120)
  if [ "$transport" = pipe ]; then args+=(--pipe "$pipe_name"); else args+=(--port "$port"); fi

  : >"$out"
  node node-server.js "${args[@]}" >"$out" 2>"$err" </dev/null &
  server_pid=$!

  local url=""
  for _ in $(seq 1 150); do
    url="$(sed -n 's/^listening [a-z]* \(.*\)$/\1/p' "$out" | head -n 1)"
    [ -n "$url" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$url" ]; then
    echo "selftest: $transport server did not report listening; its output:"
    cat "$out" "$err"
    stop_server
    return 1
  fi
  echo "selftest: $transport server listening at $url"

  local status=0
  timeout 90 node node-client.js --url "$url" --password "$password" --size "$size" --pings "$pings" \
    >"$scratch/$transport.client.out" 2>"$scratch/$transport.client.err" </dev/null || status=$?
  cat "$scratch/$transport.client.out"
  if [ "$status" -ne 0 ]; then
    echo "selftest: $transport client exited with $status; client stderr:"
    tail -n 20 "$scratch/$transport.client.err"
  elif ! grep -q '^{"step":"done","ok":true' "$scratch/$transport.client.out"; then
    echo "selftest: $transport client exited 0 without a done line"
    status=1
  elif ! grep -q '"event":"upload","ok":true.*"checksum_verified":true' "$out"; then
    echo "selftest: $transport server did not verify an upload checksum; server output:"
    cat "$out"
    status=1
  fi
  stop_server
  if grep -q '"event":"internal-error"' "$out"; then
    echo "selftest: $transport server reported an internal error:"
    grep '"event":"internal-error"' "$out"
    status=1
  fi
  return "$status"
}

passed=0
failed=0
for transport in $transports; do
  case "$transport" in
    socket) port=$((base_port)) ;;
    ws) port=$((base_port + 1)) ;;
    grpc) port=$((base_port + 2)) ;;
    pipe) port="" ;;
    *) echo "selftest: unknown transport '$transport'"; failed=$((failed + 1)); continue ;;
  esac
  if run_one "$transport" "$port"; then
    echo "PASS $transport"
    passed=$((passed + 1))
  else
    echo "FAIL $transport"
    failed=$((failed + 1))
  fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
