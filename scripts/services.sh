#!/usr/bin/env bash
# scripts/services.sh: installs, locates and runs the services tokenledger needs outside Cargo:
# a Kafka-protocol broker (tansu), PostgreSQL 15 + TimescaleDB 2.28.3 Community (the tests' database,
# built from source once), PGlite + TimescaleDB (tools/pglite/, the demo's embedded database),
# Prometheus, Alertmanager, promtool and amtool, a Python venv for the tests that use non-Rust
# clients, and the FinOps Foundation's focus-validator (a Python venv of its own) that checks the
# FOCUS export.
#
#   scripts/services.sh install   install whatever is missing (idempotent, pinned versions)
#   scripts/services.sh install --demo
#                                 only what the demo runs: the broker and PGlite (no TimescaleDB
#                                 build, Prometheus, TLS terminator or Python test packages)
#   scripts/services.sh env       print `export TOKENLEDGER_..._BIN=...` lines for the test harness
#   scripts/services.sh start     run broker + database in the background for the demo
#   scripts/services.sh stop      stop them
#   scripts/services.sh status    show what runs and where
#
# Installed artifacts live in ${TOKENLEDGER_CACHE:-$HOME/.cache/tokenledger}, outside the clone, so a
# fresh clone reuses them; `install` still checks every one and installs what a fresh machine lacks.
# The demo stack keeps pid files and logs in .tokenledger/ at the repository root (gitignored).
# The pieces: lib/versions.sh (pins and ports), lib/install.sh, lib/timescaledb.sh (installers),
# lib/supervise.sh (pid files, start, stop); this file only dispatches and prints the environment.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${TOKENLEDGER_CACHE:-$HOME/.cache/tokenledger}
STATE_DIR="$ROOT/.tokenledger"

SCRIPT_NAME=services
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
# shellcheck source=scripts/lib/versions.sh
. "$ROOT/scripts/lib/versions.sh"
# shellcheck source=scripts/lib/install.sh
. "$ROOT/scripts/lib/install.sh"
# shellcheck source=scripts/lib/timescaledb.sh
. "$ROOT/scripts/lib/timescaledb.sh"
# shellcheck source=scripts/lib/supervise.sh
. "$ROOT/scripts/lib/supervise.sh"

cmd_install() {
  local t0=$SECONDS
  mkdir -p "$CACHE"
  case "${1:-}" in
  --demo)
    # The demo builds the binaries (librdkafka links the system OpenSSL) and runs the broker and
    # PGlite; nothing else.
    install_system_packages libssl-dev pkg-config
    install_tansu
    install_pglite
    ;;
  "")
    install_system_packages libssl-dev pkg-config stunnel4 postgresql-15
    install_tansu
    install_timescaledb
    install_pglite
    install_prometheus
    install_python_venv
    install_focus_validator
    ;;
  *) die "install: unknown option $1" ;;
  esac
  say "install done in $((SECONDS - t0)) s (cache: $CACHE)"
}

# Prints what is installed; a test whose service is missing fails naming the variable it lacks.
# The broker and PGlite are needed by every use (the demo's stack included).
cmd_env() {
  [ -x "$TANSU_BIN" ] || die "tansu is not installed: run scripts/services.sh install"
  local dir
  dir=$(pglite_dir)
  [ -f "$dir/.installed" ] || die "pglite is not installed: run scripts/services.sh install"
  sync_pglite_server
  printf 'export TOKENLEDGER_TANSU_BIN=%q\n' "$TANSU_BIN"
  if [ -x "$PG_BIN_DIR/postgres" ] && installed_timescaledb; then
    printf 'export TOKENLEDGER_PG_BIN_DIR=%q\n' "$PG_BIN_DIR"
  fi
  printf 'export TOKENLEDGER_PGLITE_SERVER=%q\n' "$dir/server.mjs"
  printf 'export TOKENLEDGER_NODE_BIN=%q\n' "$(command -v node)"
  local var cmd path
  for var in PROMETHEUS:prometheus PROMTOOL:promtool ALERTMANAGER:prometheus-alertmanager \
    AMTOOL:amtool STUNNEL:stunnel4; do
    cmd=${var#*:}
    var=${var%%:*}
    path=$(command -v "$cmd" || true)
    # Some distributions name it stunnel.
    [ -n "$path" ] || [ "$cmd" != stunnel4 ] || path=$(command -v stunnel || true)
    [ -z "$path" ] || printf 'export TOKENLEDGER_%s_BIN=%q\n' "$var" "$path"
  done
  local venv
  venv=$(python_venv_dir)
  if [ -f "$venv/.installed" ]; then
    printf 'export TOKENLEDGER_PYTHON_BIN=%q\n' "$venv/bin/python"
  fi
  if [ -f "$FOCUS_VALIDATOR_DIR/.installed" ]; then
    local site
    site=$(ls -d "$FOCUS_VALIDATOR_DIR"/lib/python3*/site-packages 2>/dev/null | head -n1)
    printf 'export TOKENLEDGER_FOCUS_VALIDATOR_BIN=%q\n' "$FOCUS_VALIDATOR_DIR/bin/focus-validator"
    # focus-validator 1.0.0 reads its currency list from a path relative to its site-packages.
    printf 'export TOKENLEDGER_FOCUS_VALIDATOR_DIR=%q\n' "$site"
  fi
}

# --- the demo stack: broker and PGlite ---------------------------------------------------------

pglite_ready() {
  grep -q "pglite-tcp listening on 127.0.0.1:$TOKENLEDGER_PG_PORT" "$STATE_DIR/pglite.log"
}

kafka_ready() {
  port_open "$TOKENLEDGER_KAFKA_PORT"
}

cmd_start() {
  eval "$(cmd_env)"
  mkdir -p "$STATE_DIR"
  local failed=0
  if start_one kafka "$TOKENLEDGER_TANSU_BIN" broker \
    --listener-url "tcp://127.0.0.1:$TOKENLEDGER_KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$TOKENLEDGER_KAFKA_PORT" \
    --storage-engine memory://tansu/; then
    wait_until kafka 20 kafka_ready || failed=1
  fi
  mkdir -p "$STATE_DIR/pgdata"
  if start_one pglite env PORT="$TOKENLEDGER_PG_PORT" DATA_DIR="$STATE_DIR/pgdata" \
    "$TOKENLEDGER_NODE_BIN" "$TOKENLEDGER_PGLITE_SERVER"; then
    wait_until pglite 60 pglite_ready || failed=1
  fi
  if [ "$failed" -ne 0 ]; then
    cmd_stop
    die "stack did not start"
  fi
  cmd_status
}

cmd_stop() {
  stop_one pglite
  stop_one kafka
}

cmd_status() {
  local name port rc=0
  for name in kafka pglite; do
    case $name in
    kafka) port=$TOKENLEDGER_KAFKA_PORT ;;
    pglite) port=$TOKENLEDGER_PG_PORT ;;
    esac
    if pid_alive "$name"; then
      printf '%-7s running  pid %-7s 127.0.0.1:%s  log %s\n' "$name" "$(cat "$STATE_DIR/$name.pid")" \
        "$port" "$STATE_DIR/$name.log"
    else
      printf '%-7s stopped\n' "$name"
      rc=3
    fi
  done
  printf 'kafka bootstrap servers: 127.0.0.1:%s\n' "$TOKENLEDGER_KAFKA_PORT"
  printf 'database: host=127.0.0.1 port=%s user=postgres\n' "$TOKENLEDGER_PG_PORT"
  return $rc
}

usage() {
  sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
install) cmd_install "${2:-}" ;;
env) cmd_env ;;
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
-h | --help | help) usage ;;
*)
  usage >&2
  exit 2
  ;;
esac
