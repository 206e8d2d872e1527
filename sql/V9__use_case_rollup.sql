-- V9__use_case_rollup.sql: cost and tokens per UTC day, tenant, provider, model and attribution
-- label (`use_case`, `feature`, `team`, ...: the keys named in the processor's
-- `attribution.labels`).
--
-- Not a continuous aggregate: the keys are configuration, and a continuous aggregate can neither
-- unnest a JSONB object nor take its key list from a setting, so it would need one view per key
-- and a migration per configuration change. Instead the processor adds each batch's new rows to
-- this table inside the batch transaction, the way it adds budget spend (processor/src/
-- attribution.rs): only rows the insert reported new are counted, so a redelivered or duplicated
-- event is counted once, and the rollup commits or rolls back together with the rows and the
-- offsets. Every configured key gets one row per (day, tenant, provider, model, value); an event
-- without the label counts under the value '(unlabelled)', so the values of one key always sum to
-- the tenant's whole cost for the day.
--
-- A month's report reads at most days x tenants x models x values rows and never the raw table.
--
-- Runs inside one transaction; every statement is idempotent.

CREATE TABLE IF NOT EXISTS usage_attribution_daily (
    day                  TIMESTAMPTZ    NOT NULL,
    tenant_id            VARCHAR(255)   NOT NULL,
    label_key            TEXT           NOT NULL,
    label_value          TEXT           NOT NULL,
    provider             VARCHAR(100)   NOT NULL,
    model                VARCHAR(100)   NOT NULL,
    requests             BIGINT         NOT NULL DEFAULT 0,
    prompt_tokens        BIGINT         NOT NULL DEFAULT 0,
    completion_tokens    BIGINT         NOT NULL DEFAULT 0,
    total_tokens         BIGINT         NOT NULL DEFAULT 0,
    cached_prompt_tokens BIGINT         NOT NULL DEFAULT 0,
    cache_write_tokens   BIGINT         NOT NULL DEFAULT 0,
    reasoning_tokens     BIGINT         NOT NULL DEFAULT 0,
    -- the same scale as estimated_cost, so sums stay exact
    cost                 NUMERIC(30,10) NOT NULL DEFAULT 0,
    unpriced_requests    BIGINT         NOT NULL DEFAULT 0,
    updated_at           TIMESTAMPTZ    NOT NULL DEFAULT now(),
    PRIMARY KEY (day, tenant_id, label_key, label_value, provider, model)
);

-- 30-day chunks: a day holds one row per tenant, model and label value, far fewer than the raw
-- table's rows, so a chunk per month keeps chunk counts low.
SELECT create_hypertable(
    'usage_attribution_daily',
    by_range('day', INTERVAL '30 days'),
    create_default_indexes => FALSE,
    if_not_exists => TRUE
);

-- Reports ask "cost by <key> for this tenant over these days".
CREATE INDEX IF NOT EXISTS usage_attribution_daily_key_tenant_day_idx
    ON usage_attribution_daily (label_key, tenant_id, day DESC);
