#!/usr/bin/env bash
# End-to-end demo:
#  1. the robot example (examples/robot): robot_demo streams IMU, lidar, a map upload and teleop
#     over tcp loopback in one process, then robot_server and robot_client do the same across two
#     processes over shared memory; each prints per-stream messages, rate and latency;
#  2. the echo example: one echo_server listening on TCP and on a Unix socket, and echo_client
#     calling every kind of method over both plus one call in netpipe compatibility mode.
#
# Usage: scripts/demo.sh            (after `make build`; `make demo` does both)
# Env:   FLATPIPE_BUILD_DIR         build directory (default: build)
#        DEMO_SECONDS               how long the robot streams run (default: 3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build_dir=${FLATPIPE_BUILD_DIR:-build}
seconds=${DEMO_SECONDS:-3}
robot_dir=$build_dir/examples/robot
server_bin=$build_dir/examples/echo/echo_server
client_bin=$build_dir/examples/echo/echo_client
for bin in "$server_bin" "$client_bin" "$robot_dir/robot_demo" "$robot_dir/robot_server" "$robot_dir/robot_client"; do
  if [[ ! -x $bin ]]; then
    echo "demo: $bin not found; build first (make build)" >&2
    exit 1
  fi
done

# A free TCP port: bind port 0 and let the kernel choose.
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
sock=/tmp/flatpipe-demo-$$.sock
tcp_uri=tcp://127.0.0.1:$port
unix_uri=unix://$sock
server_log=$(mktemp /tmp/flatpipe-demo-$$.XXXXXX.log)
server_pid=

cleanup() {
  local rc=$?
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if ((rc != 0)) && [[ -s $server_log ]]; then
    echo "--- echo_server output ---" >&2
    cat "$server_log" >&2
  fi
  rm -f "$sock" "$server_log"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() { echo "demo: $*" >&2; exit 1; }

echo "== robot example, one process over tcp loopback"
echo "\$ $robot_dir/robot_demo --seconds $seconds"
"$robot_dir/robot_demo" --seconds "$seconds" || fail "robot_demo failed"

echo
echo "== robot example, two processes over shared memory (zero-copy shm://)"
bash examples/robot/robot_pair.sh "$robot_dir" "shm://flatpipe-demo-robot-$$" "$seconds" ||
  fail "robot_server + robot_client over shm failed"
echo
echo "== echo example"

echo "\$ $server_bin --listen $tcp_uri --listen $unix_uri &"
"$server_bin" --listen "$tcp_uri" --listen "$unix_uri" >"$server_log" 2>&1 &
server_pid=$!

# Wait (at most 5 s) until both endpoints accept connections, or the server exits.
wait_rc=0
python3 - "$port" "$sock" "$server_pid" <<'PY' || wait_rc=$?
import socket, sys, time

port, path, pid = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def server_alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

def accepts():
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as u:
            u.settimeout(0.5)
            u.connect(path)
        return True
    except OSError:
        return False

deadline = time.monotonic() + 5.0
while time.monotonic() < deadline:
    if not server_alive():
        sys.exit(2)
    if accepts():
        sys.exit(0)
    time.sleep(0.05)
sys.exit(1)
PY
case $wait_rc in
  0) ;;
  2) fail "echo_server exited during startup" ;;
  *) fail "echo_server did not accept connections on $tcp_uri and $unix_uri within 5 s" ;;
esac
echo "echo_server is up (pid $server_pid)"

# Run a client command, show its output, and check the output against a pattern.
#   expect EXIT_OK PATTERN -- command...   (EXIT_OK: "0" = must succeed, "any" = may fail)
expect() {
  local exit_ok=$1 pattern=$2
  shift 3
  echo "\$ $*"
  local out rc=0
  out=$("$@") || rc=$?
  if [[ -n $out ]]; then printf '%s\n' "$out"; fi
  if [[ $exit_ok == 0 ]] && ((rc != 0)); then
    fail "command failed (exit $rc): $*"
  fi
  grep -Eq -- "$pattern" <<<"$out" || fail "unexpected output (wanted /$pattern/): $*"
}

for uri in "$tcp_uri" "$unix_uri"; do
  echo
  echo "== $uri"
  # 1: unary echo
  expect 0 '^ok 010203$' -- "$client_bin" --connect "$uri" 1 010203
  # 2: unary, payload reversed
  expect 0 '^ok 030201$' -- "$client_bin" --connect "$uri" 2 010203
  # 3: the handler fails; the client prints the status (and may exit non-zero)
  expect any '^err .*boom' -- "$client_bin" --connect "$uri" 3 010203
  # 4: server streaming: one hex line per message, then `end`
  expect 0 '^end$' -- "$client_bin" --connect "$uri" 4 010203
  # 5: client streaming: comma-separated messages
  expect 0 '^ok' -- "$client_bin" --connect "$uri" 5 01,0203,04
done

echo
echo "== $tcp_uri, netpipe compatibility mode"
expect 0 '^ok 010203$' -- "$client_bin" --connect "$tcp_uri" --netpipe 1 010203

echo
echo "demo: all calls behaved as expected"
