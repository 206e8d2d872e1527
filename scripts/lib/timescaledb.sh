# shellcheck shell=bash
# scripts/lib/timescaledb.sh: PostgreSQL 15 from Debian and TimescaleDB Community built from the
# pinned release source (vendored, or downloaded and checked against its hash), installed into
# PostgreSQL's directories so the tests run on exactly this build.

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
