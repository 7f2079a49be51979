# Sourced by the scripts beside it: endpoint KIND PORT sets `args` (the
# openiap-server flags that open only that transport) and `url`.
endpoint() {
  local kind=$1 port=$2
  case $kind in
    socket) args=(--socket 127.0.0.1:$port --pipe off --grpc off --http off); url=socket://127.0.0.1:$port ;;
    pipe) args=(--socket off --pipe bench$port --grpc off --http off); url=pipe://./bench$port ;;
    ws) args=(--socket off --pipe off --grpc off --http 127.0.0.1:$port); url=ws://127.0.0.1:$port/ws/v2 ;;
    grpc) args=(--socket off --pipe off --grpc 127.0.0.1:$port --http off); url=grpc://127.0.0.1:$port ;;
    *) echo "transport: socket, pipe, ws or grpc" >&2; exit 2 ;;
  esac
}

# wait_listening LOG [TRIES] [STEP]: waits until the server's log says it is
# listening (TRIES checks STEP seconds apart, default 50 x 0.1 s); fails if it
# never does.
wait_listening() {
  local log=$1 tries=${2:-50} step=${3:-0.1}
  for _ in $(seq "$tries"); do grep -q listening "$log" && return 0; sleep "$step"; done
  echo "the server never logged 'listening': $log" >&2
  return 1
}
