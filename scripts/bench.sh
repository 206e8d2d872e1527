#!/usr/bin/env bash
# scripts/bench.sh: tokenledger's benchmark in one command. Installs the local services when
# missing (scripts/services.sh), builds the release binaries, then runs `tokenledger-bench`, which
# starts broker, database, `processor migrate`, processor and gateway on free loopback ports,
# measures the ceilings (raw rdkafka produce, raw binary COPY) and drives the gateway over HTTP;
# prints a Markdown table and writes target/bench/report.json. The database is PostgreSQL 15 +
# TimescaleDB 2.28.3 Community, the one the tests use (scripts/services.sh builds it).
#
#   scripts/bench.sh              full run (about 8 minutes)
#   scripts/bench.sh --quick      smoke run (about 3 minutes)
#   scripts/bench.sh --pglite     against PGlite + TimescaleDB 2.23 (the demo's database)
#   scripts/bench.sh --native     against native PostgreSQL 17 + TimescaleDB (Apache edition),
#                                 installed by scripts/native-timescaledb.sh (needs root)
#   scripts/bench.sh -- ARGS      pass ARGS to tokenledger-bench (see `--help` there), e.g.
#                                 -- --processor-env TOKENLEDGER_BATCH__MAX_LATENCY_MS=50
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tokenledger/target}
bench_args=()
native=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
  --quick) bench_args+=(--quick) ;;
  --native) native=1 ;;
  --pglite)
    bench_args+=(--pglite)
    out=${out:-target/bench/report-pglite.json}
    ;;
  --out)
    out=${2:?--out needs a path}
    shift
    ;;
  -h | --help)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  --)
    shift
    bench_args+=("$@")
    break
    ;;
  *)
    echo "bench: unknown argument $1 (see --help)" >&2
    exit 2
    ;;
  esac
  shift
done

bash scripts/services.sh install
eval "$(bash scripts/services.sh env)"
if [ "$native" = 1 ]; then
  native_root=$(bash scripts/native-timescaledb.sh install | tail -n1)
  bench_args+=(--native-root "$native_root")
  out=${out:-target/bench/report-native.json}
fi
out=${out:-target/bench/report.json}

cargo build --release --bins -p gateway -p processor -p bench
exec "$CARGO_TARGET_DIR/release/tokenledger-bench" --out "$out" "${bench_args[@]}"
