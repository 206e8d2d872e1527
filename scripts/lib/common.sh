# shellcheck shell=bash
# scripts/lib/common.sh: shell helpers shared by tokenledger's scripts. Source it after setting
# SCRIPT_NAME (the prefix of every message) and, if it must differ from 1, DIE_STATUS.

say() { printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2; }

die() {
  printf '%s: ERROR: %s\n' "$SCRIPT_NAME" "$*" >&2
  exit "${DIE_STATUS:-1}"
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

# Installs Debian packages. A fresh machine may have empty package lists; update only when the
# install itself fails.
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  if ! as_root apt-get install -y --no-install-recommends "$@" </dev/null; then
    say "apt-get install failed; running apt-get update and retrying"
    as_root apt-get update </dev/null
    as_root apt-get install -y --no-install-recommends "$@" </dev/null
  fi
}
