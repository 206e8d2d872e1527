#!/usr/bin/env bash
# scripts/test.sh: tokenledger's one test command, locally and in CI. Installs and locates the
# services (scripts/services.sh), then runs formatting, lints, the build, the Prometheus rule
# checks and the whole test suite (unit, integration and end-to-end) with cargo-nextest, last, so
# the output ends with nextest's summary. Exits non-zero if any step failed; every step runs even
# after an earlier one failed, so one run shows every problem.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# A target dir outside the clone survives fresh CI clones (a cold build of librdkafka alone takes
# over a minute); installed services are still checked every run.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tokenledger/target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-auto}

failed=()
step() {
  local name=$1
  shift
  printf '\n==> %s\n' "$name" >&2
  local t0=$SECONDS
  if "$@"; then
    printf '==> %s: ok (%d s)\n' "$name" $((SECONDS - t0)) >&2
  else
    printf '==> %s: FAILED (%d s)\n' "$name" $((SECONDS - t0)) >&2
    failed+=("$name")
  fi
}

# The harness starts the services each test needs and stops them when the test ends; each child
# it spawns leaves a pid file in TOKENLEDGER_E2E_PID_DIR until it is reaped. If a test process is
# killed before it can clean up (or this script is interrupted), the trap kills exactly those.
TOKENLEDGER_E2E_PID_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tokenledger-e2e-pids.XXXXXX")
export TOKENLEDGER_E2E_PID_DIR
cleanup() {
  local f pid
  for f in "$TOKENLEDGER_E2E_PID_DIR"/*; do
    [ -e "$f" ] || continue
    pid=$(basename "$f")
    if kill -0 "$pid" 2>/dev/null; then
      echo "scripts/test.sh: stopping leftover $(cat "$f") (pid $pid)" >&2
      kill -KILL "$pid" 2>/dev/null
    fi
  done
  rm -rf "$TOKENLEDGER_E2E_PID_DIR"
  return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! bash scripts/services.sh install; then
  echo "scripts/test.sh: installing the services failed; the tests cannot run" >&2
  exit 1
fi
eval "$(bash scripts/services.sh env)" || exit 1

step "cargo fmt" cargo fmt --all --check
step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
step "cargo build" cargo build --workspace --bins
# Compose v2, the Compose Specification schema and hadolint on docker-compose.yml and the
# Dockerfile; every other deployment check is a test in tests/e2e/deploy/.
step "check deploy" bash scripts/check-deploy.sh

shopt -s nullglob
rules=(alerts/*.yml)
rule_tests=(alerts/tests/*.yml)
shopt -u nullglob
if [ ${#rules[@]} -gt 0 ]; then
  step "promtool check rules" "$TOKENLEDGER_PROMTOOL_BIN" check rules "${rules[@]}"
fi
if [ ${#rule_tests[@]} -gt 0 ]; then
  step "promtool test rules" "$TOKENLEDGER_PROMTOOL_BIN" test rules "${rule_tests[@]}"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  printf '\n==> installing cargo-nextest\n' >&2
  cargo install cargo-nextest --locked || failed+=("install cargo-nextest")
fi

if [ ${#failed[@]} -gt 0 ]; then
  printf '\nscripts/test.sh: failed before the tests: %s\n' "${failed[*]}" >&2
fi
# Last, so the output ends with nextest's summary line.
printf '\n==> cargo nextest\n' >&2
cargo nextest run --workspace --no-fail-fast
rc=$?
if [ ${#failed[@]} -gt 0 ] && [ $rc -eq 0 ]; then
  rc=1
fi
exit $rc
