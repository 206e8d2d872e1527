#!/usr/bin/env bash
# scripts/native-timescaledb.sh: a native PostgreSQL 17 with TimescaleDB (Apache-licensed edition:
# hypertables, no continuous aggregates, compression or job policies) for the benchmark's
# `--native` mode, installed with debootstrap into a Debian trixie root under the cache directory
# and run inside it with chroot on a loopback port. Needs root (debootstrap, chroot).
#
#   scripts/native-timescaledb.sh install   install when missing (idempotent); prints the root dir
#   scripts/native-timescaledb.sh root      print the root dir (fails when not installed)
#
# Pinned: the Debian suite (trixie), PostgreSQL's major version (17) and TimescaleDB's major
# version (2); the exact package versions are recorded in <root>/.tokenledger-installed and
# checked on every call. The mirror is the one apt already uses (the first `URIs:` of the system's
# apt sources), overridable with TOKENLEDGER_DEBIAN_MIRROR.
set -euo pipefail

CACHE=${TOKENLEDGER_CACHE:-$HOME/.cache/tokenledger}
SUITE=trixie
PG_MAJOR=17
TIMESCALEDB_MAJOR=2
ROOTFS="$CACHE/native-timescaledb-$SUITE-pg$PG_MAJOR"
MARKER="$ROOTFS/.tokenledger-installed"

SCRIPT_NAME=native-timescaledb
# shellcheck source=scripts/lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

mirror() {
  if [ -n "${TOKENLEDGER_DEBIAN_MIRROR:-}" ]; then
    printf '%s' "$TOKENLEDGER_DEBIAN_MIRROR"
    return
  fi
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1 || true)
  fi
  printf '%s' "${uri:-http://deb.debian.org/debian}"
}

installed_versions() {
  # shellcheck disable=SC2016 # dpkg-query's own format, not shell expansion
  as_root chroot "$ROOTFS" dpkg-query -W -f '${Package}=${Version}\n' \
    "postgresql-$PG_MAJOR" "postgresql-$PG_MAJOR-timescaledb" 2>/dev/null
}

check() {
  [ -f "$MARKER" ] || return 1
  local now
  now=$(installed_versions) || return 1
  [ "$now" = "$(cat "$MARKER")" ] || return 1
  grep -q "^postgresql-$PG_MAJOR=$PG_MAJOR\." <<<"$now" || die "unexpected PostgreSQL version: $now"
  grep -q "^postgresql-$PG_MAJOR-timescaledb=$TIMESCALEDB_MAJOR\." <<<"$now" ||
    die "unexpected TimescaleDB version: $now"
  [ -x "$ROOTFS/usr/lib/postgresql/$PG_MAJOR/bin/postgres" ] || return 1
}

cmd_install() {
  if check; then
    say "present: $ROOTFS ($(tr '\n' ' ' <"$MARKER"))"
    printf '%s\n' "$ROOTFS"
    return
  fi
  command -v debootstrap >/dev/null 2>&1 || {
    say "debootstrap: missing, installing from apt"
    apt_install debootstrap
  }
  local t0=$SECONDS
  local partial="$ROOTFS.partial"
  as_root rm -rf "$partial"
  mkdir -p "$CACHE"
  say "debootstrap $SUITE into $partial from $(mirror) (about a minute)"
  as_root debootstrap --variant=minbase \
    --include="postgresql-$PG_MAJOR,postgresql-$PG_MAJOR-timescaledb" \
    "$SUITE" "$partial" "$(mirror)" >"$CACHE/native-timescaledb-debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $CACHE/native-timescaledb-debootstrap.log"
  as_root rm -rf "$ROOTFS"
  as_root mv "$partial" "$ROOTFS"
  installed_versions | as_root tee "$MARKER" >/dev/null
  check || die "the installed root does not pass its checks: $(cat "$MARKER" 2>/dev/null)"
  say "installed in $((SECONDS - t0)) s: $(tr '\n' ' ' <"$MARKER")"
  printf '%s\n' "$ROOTFS"
}

cmd_root() {
  check || die "not installed: run scripts/native-timescaledb.sh install"
  printf '%s\n' "$ROOTFS"
}

case "${1:-}" in
install) cmd_install ;;
root) cmd_root ;;
*)
  sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
  ;;
esac
