#!/usr/bin/env bash
# Runs robot_server and robot_client as two processes on one endpoint and exits with the
# client's status (0: every stream ended OK). The server is stopped on every path.
#
# Usage: robot_pair.sh BIN_DIR URI SECONDS
#   e.g. robot_pair.sh build/examples/robot shm://robot 3
set -euo pipefail
bin_dir=$1 uri=$2 seconds=$3

log=$(mktemp "${TMPDIR:-/tmp}/flatpipe-robot-pair.XXXXXX.log")
server_pid=
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -f "$log"
}
trap cleanup EXIT

echo "\$ $bin_dir/robot_server --listen $uri &"
"$bin_dir/robot_server" --listen "$uri" >"$log" 2>&1 &
server_pid=$!
# Wait (at most 5 s) for the server to listen; fail if it exits first.
for _ in $(seq 100); do
  grep -q "listening on" "$log" && break
  if ! kill -0 "$server_pid" 2>/dev/null; then
    cat "$log" >&2
    echo "robot_pair: robot_server exited during startup" >&2
    exit 1
  fi
  sleep 0.05
done
if ! grep -q "listening on" "$log"; then
  cat "$log" >&2
  echo "robot_pair: robot_server did not listen on $uri within 5 s" >&2
  exit 1
fi
echo "\$ $bin_dir/robot_client --connect $uri --seconds $seconds"
"$bin_dir/robot_client" --connect "$uri" --seconds "$seconds"
