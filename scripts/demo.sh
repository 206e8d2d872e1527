#!/usr/bin/env bash
# scripts/demo.sh: tokenledger's main job in one command. On a fresh machine it installs and starts
# the local services (Kafka-protocol broker, TimescaleDB), builds and starts the gateway and the
# processor, sends realistic multi-tenant traffic through the gateway, waits until every accepted
# event has landed, and prints what landed: rows, cost, daily rollups per tenant and model.
#
#   scripts/demo.sh                 run, report, stop everything
#   scripts/demo.sh --keep          leave the stack running afterwards (stop with --stop)
#   scripts/demo.sh --stop          stop a stack left running by --keep
#   scripts/demo.sh --events 50000  more traffic (default 20000)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STATE="$ROOT/.tokenledger"
mkdir -p "$STATE"

KEEP=0
EVENTS=20000
PROFILE=debug
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1 ;;
    --stop) STOP_ONLY=1 ;;
    --events)
      EVENTS=${2:?--events needs a number}
      shift
      ;;
    --release) PROFILE=release ;;
    -h | --help)
      sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "demo: unknown argument $1 (see --help)" >&2
      exit 2
      ;;
  esac
  shift
done

# Ports of the demo stack; the broker and database ports are defined in scripts/services.sh.
GATEWAY_PORT=${TOKENLEDGER_DEMO_GATEWAY_PORT:-18080}
GATEWAY_ADMIN_PORT=${TOKENLEDGER_DEMO_GATEWAY_ADMIN_PORT:-19464}
PROCESSOR_METRICS_PORT=${TOKENLEDGER_DEMO_METRICS_PORT:-18081}
KAFKA_PORT=${TOKENLEDGER_KAFKA_PORT:-19092}
PG_PORT=${TOKENLEDGER_PG_PORT:-55433}

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tokenledger/target}
BIN="$CARGO_TARGET_DIR/$PROFILE"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
SCRIPT_NAME=demo
STATE_DIR=$STATE
# shellcheck source=scripts/lib/common.sh
. "$ROOT/scripts/lib/common.sh"
# The gateway and the processor are stopped like the services' stack (SIGTERM, then SIGKILL).
# shellcheck source=scripts/lib/supervise.sh
. "$ROOT/scripts/lib/supervise.sh"

stop_all() {
  stop_one gateway
  stop_one processor
  bash scripts/services.sh stop || true
}

if [ "${STOP_ONLY:-0}" = 1 ]; then
  stop_all
  exit 0
fi

# The binaries read only TOKENLEDGER_<SECTION>__<KEY>; keep the demo's own settings out of their way.
common_env=(
  "TOKENLEDGER_KAFKA__BROKERS=127.0.0.1:$KAFKA_PORT"
  "TOKENLEDGER_LOG=${TOKENLEDGER_LOG:-info}"
)
DATABASE_URL="host=127.0.0.1 port=$PG_PORT user=postgres dbname=postgres"

finish() {
  local rc=$?
  if [ "$KEEP" = 1 ] && [ $rc -eq 0 ]; then
    return
  fi
  if [ $rc -ne 0 ]; then
    echo "demo: failed; logs are in $STATE/ (gateway.log, processor.log, broker/database logs)" >&2
  fi
  stop_all >/dev/null 2>&1 || true
}
trap finish EXIT

step "Installing and starting the local services (broker, TimescaleDB)"
bash scripts/services.sh install --demo
# A stack left running by an earlier --keep is replaced, so the report shows this run only.
stop_one gateway
stop_one processor
bash scripts/services.sh stop >/dev/null 2>&1 || true
rm -rf "$STATE/pgdata"
bash scripts/services.sh start

step "Building tokenledger ($PROFILE)"
if [ "$PROFILE" = release ]; then
  cargo build --release --bins -p gateway -p processor -p loadgen
else
  cargo build --bins -p gateway -p processor -p loadgen
fi

step "Migrating the database"
env "${common_env[@]}" "TOKENLEDGER_DATABASE__URL=$DATABASE_URL" "$BIN/processor" migrate

# An admin key for this demo only: the gateway stores its SHA-256, never the key.
ADMIN_KEY="demo-admin-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
ADMIN_SHA=$(printf '%s' "$ADMIN_KEY" | "$BIN/gateway" hash-key)
cat >"$STATE/gateway.toml" <<EOF
[auth]
keys = [{ sha256 = "$ADMIN_SHA", admin = true }]
EOF

step "Starting the processor and the gateway"
env "${common_env[@]}" \
  "TOKENLEDGER_DATABASE__URL=$DATABASE_URL" \
  "TOKENLEDGER_METRICS__LISTEN=127.0.0.1:$PROCESSOR_METRICS_PORT" \
  "$BIN/processor" run >"$STATE/processor.log" 2>&1 &
echo $! >"$STATE/processor.pid"
env "${common_env[@]}" \
  "TOKENLEDGER_DATABASE__URL=$DATABASE_URL" \
  "TOKENLEDGER_HTTP__LISTEN=127.0.0.1:$GATEWAY_PORT" \
  "TOKENLEDGER_HTTP__ADMIN_LISTEN=127.0.0.1:$GATEWAY_ADMIN_PORT" \
  "$BIN/gateway" --config "$STATE/gateway.toml" >"$STATE/gateway.log" 2>&1 &
echo $! >"$STATE/gateway.pid"

wait_http() {
  local what=$1 url=$2 log=$3
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null "$url" 2>/dev/null; then
      echo "demo: $what is ready ($url)"
      return 0
    fi
    sleep 0.2
  done
  tail -n 30 "$log" >&2 || true
  die "$what did not become ready at $url within 60 s"
}
wait_http "gateway" "http://127.0.0.1:$GATEWAY_PORT/readyz" "$STATE/gateway.log"
wait_http "processor" "http://127.0.0.1:$PROCESSOR_METRICS_PORT/healthz" "$STATE/processor.log"

step "The gateway turns away bad input (nothing of it is appended)"
curl -sS -X POST "http://127.0.0.1:$GATEWAY_PORT/v1/usage" \
  -H "Authorization: Bearer $ADMIN_KEY" -H 'content-type: application/json' \
  -d '[{"tenant_id":"acme","provider":"openai","model":"gpt-4o","prompt_tokens":-5,"completion_tokens":10},{"tenant_id":"acme","provider":"openai","model":"gpt-4o","prompt_tokens":5,"completion_tokens":10,"colour":"blue"}]' \
  -w '\nHTTP %{http_code}\n'
curl -sS -X POST "http://127.0.0.1:$GATEWAY_PORT/v1/usage" -H 'content-type: application/json' \
  -d '{}' -w '\nHTTP %{http_code}\n'

step "A monthly budget for every tenant (\$2 each, alerts at 50/75/90/100 %)"
curl -sS -X POST "http://127.0.0.1:$GATEWAY_PORT/v1/budgets" \
  -H "Authorization: Bearer $ADMIN_KEY" -H 'content-type: application/json' \
  -d '{"name":"every-tenant-monthly","tenant_id":"*","period":"monthly","amount_usd":"2"}' \
  -w '\nHTTP %{http_code}\n'

step "Sending $EVENTS events from 25 tenants over the past 7 days (batches of 100, 2% resent as client retries)"
"$BIN/tokenledger-loadgen" --url "http://127.0.0.1:$GATEWAY_PORT" --api-key "$ADMIN_KEY" \
  --events "$EVENTS" --tenants 25 --spread-days 7 --batch-size 100 --concurrency 8 \
  --duplicate-share 0.02 --quiet | tee "$STATE/loadgen.txt"
ACCEPTED=$(awk '/^events accepted/ {print $NF}' "$STATE/loadgen.txt")
[ -n "$ACCEPTED" ] || die "the load generator reported no accepted events (see $STATE/loadgen.txt)"

step "Waiting until every accepted event has landed in gateway_mode_audit"
rows=0
for _ in $(seq 1 600); do
  rows=$(env "${common_env[@]}" "TOKENLEDGER_DATABASE__URL=$DATABASE_URL" "$BIN/processor" report --format json --days 1 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["rows"])' 2>/dev/null || echo 0)
  [ "$rows" -ge "$ACCEPTED" ] && break
  sleep 0.5
done
echo "demo: $rows rows for $ACCEPTED accepted events (duplicates absorbed: each event stored once)"
[ "$rows" -eq "$ACCEPTED" ] || die "expected exactly $ACCEPTED rows, found $rows"

step "What landed (rollups refreshed)"
env "${common_env[@]}" "TOKENLEDGER_DATABASE__URL=$DATABASE_URL" "$BIN/processor" report --refresh --days 8

step "Optimization (processor report optimize / what-if, also GET /v1/reports/optimize and /v1/reports/what-if)"
OPT_FROM=$(date -u -d '8 days ago' +%F)
OPT_TO=$(date -u -d tomorrow +%F)
opt() { env "${common_env[@]}" "TOKENLEDGER_DATABASE__URL=$DATABASE_URL" TOKENLEDGER_LOG=warn "$BIN/processor" "$@"; }
opt report optimize --from "$OPT_FROM" --to "$OPT_TO" --format json >"$STATE/optimize.json"
TOP_USE_CASE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["prompt_length_by_use_case"][0]["use_case"])' "$STATE/optimize.json")
for candidate in openai/gpt-4o-mini openai/gpt-5-mini anthropic/claude-haiku-4-5 google/gemini-2.5-flash; do
  opt what-if --from "$OPT_FROM" --to "$OPT_TO" --use-case "$TOP_USE_CASE" --model "$candidate" --format json \
    >"$STATE/what-if-${candidate//\//_}.json"
done
python3 - "$STATE" <<'PY'
import glob, json, sys
from decimal import Decimal
state = sys.argv[1]
report = json.load(open(f"{state}/optimize.json"))
top = report["prompt_length_by_use_case"][0]
print(f"top use case by prompt tokens per request: {top['use_case']} "
      f"(mean {Decimal(top['prompt_tokens_mean']):.0f}, p95 {top['prompt_tokens_p95']:.0f}, "
      f"{top['requests']} requests)")
answers = [json.load(open(f)) for f in sorted(glob.glob(f"{state}/what-if-*.json"))]
best = min(answers, key=lambda a: Decimal(a["total"]["what_if_cost"]))
t = best["total"]
print(f"cheapest what-if for {top['use_case']}: {best['target']} "
      f"${Decimal(t['what_if_cost']):.2f} instead of ${Decimal(t['current_cost']):.2f} "
      f"({t['compared_requests']} requests compared, {t['unpriced_now'] + t['unpriced_at_target']} unpriced); "
      "token counts differ between tokenizers and quality is not measured")
saved = sum(Decimal(c["net_saving"]) for c in report["caching"])
prompt = sum(c["prompt_tokens"] for c in report["caching"])
cached = sum(c["cached_prompt_tokens"] for c in report["caching"])
print(f"caching saved ${saved:.2f} at list prices (cache hit ratio {cached / max(prompt, 1):.1%})")
PY

step "Budget status for acme (GET /v1/budgets/status: what an application asks before it spends)"
curl -fsS "http://127.0.0.1:$GATEWAY_PORT/v1/budgets/status?tenant_id=acme" -H "Authorization: Bearer $ADMIN_KEY" |
  python3 -m json.tool

step "The guide's Prometheus counters (processor :$PROCESSOR_METRICS_PORT/metrics, a few lines)"
curl -fsS "http://127.0.0.1:$PROCESSOR_METRICS_PORT/metrics" |
  grep -E '^axonflow_orchestrator_provider_total_cost\{' | sort -t' ' -k2 -g -r | head -n 5 || true
curl -fsS "http://127.0.0.1:$PROCESSOR_METRICS_PORT/metrics" |
  grep -E '^tokenledger_events_(inserted|duplicate|dead_lettered|unpriced)_total' || true

if [ "$KEEP" = 1 ]; then
  step "The stack keeps running"
  cat <<EOF
gateway     http://127.0.0.1:$GATEWAY_PORT/v1/usage   (admin key: $ADMIN_KEY)
            http://127.0.0.1:$GATEWAY_ADMIN_PORT/metrics
processor   http://127.0.0.1:$PROCESSOR_METRICS_PORT/metrics
database    psql "host=127.0.0.1 port=$PG_PORT user=postgres"
broker      127.0.0.1:$KAFKA_PORT
logs        $STATE/
stop with   scripts/demo.sh --stop
EOF
else
  step "Stopping the stack (use --keep to leave it running)"
fi
