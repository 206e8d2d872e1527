# shellcheck shell=bash
# scripts/lib/supervise.sh: background processes with pid files in STATE_DIR: start, wait for
# readiness, stop (SIGTERM, then SIGKILL after 10 s). The services' stack and the demo's own
# gateway and processor are stopped by the same code.

pid_alive() {
  local f="$STATE_DIR/$1.pid"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# wait_until NAME TIMEOUT_S CHECK...: polls CHECK; on timeout or process death shows the log tail.
wait_until() {
  local name=$1 timeout=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    if ! pid_alive "$name"; then
      say "$name exited during startup; last lines of $STATE_DIR/$name.log:"
      tail -n 30 "$STATE_DIR/$name.log" >&2 || true
      rm -f "$STATE_DIR/$name.pid"
      return 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "$name not ready after ${timeout}s; last lines of $STATE_DIR/$name.log:"
      tail -n 30 "$STATE_DIR/$name.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

start_one() {
  local name=$1
  shift
  if pid_alive "$name"; then
    say "$name: already running (pid $(cat "$STATE_DIR/$name.pid"))"
    return 1
  fi
  # setsid puts the service in its own session, so Ctrl-C in this shell does not reach it.
  setsid "$@" >"$STATE_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/$name.pid"
}

stop_one() {
  local name=$1 f="$STATE_DIR/$1.pid"
  [ -f "$f" ] || return 0
  local pid
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
      say "$name: did not stop after SIGTERM, killing"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    say "$name: stopped (pid $pid)"
  fi
  rm -f "$f"
}
