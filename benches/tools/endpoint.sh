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
