-- V14__optimization_rollup.sql: what the optimization report reads (`processor report optimize`,
-- GET /v1/reports/optimize, the "Optimization" dashboard): per UTC day, tenant, provider, model
-- and use case, the sums of prompt length, cost and caching, and log-bucketed histograms of
-- prompt tokens and cost per request from which percentiles are read with a stated precision.
--
-- Like usage_attribution_daily (V9) these are plain tables the processor adds each batch's new
-- rows to inside the batch transaction (store/src/optimize/rollup.rs), so a redelivered event is
-- counted once and the rollup commits or rolls back with the rows. The use case is the event's
-- `use_case` label, '(unlabelled)' without one; a value the attribution rollup folded into
-- '(other)' for that tenant and day (attribution.max_values_per_day) is folded the same way here,
-- so both rollups name the same use cases and the row count stays bounded.
--
-- The list-cost columns split the book's list price of each row by token kind, each part priced
-- under the card the whole request was priced with (long-context and service tier included):
-- what the input, the output, the cached tokens and the cache writes cost, and what the cached
-- tokens and the cache writes would have cost at the uncached input rate.
--
-- Runs inside one transaction; every statement is idempotent.

CREATE TABLE IF NOT EXISTS usage_optimize_daily (
    day                        TIMESTAMPTZ    NOT NULL,
    tenant_id                  VARCHAR(255)   NOT NULL,
    provider                   VARCHAR(100)   NOT NULL,
    model                      VARCHAR(100)   NOT NULL,
    use_case                   TEXT           NOT NULL,
    requests                   BIGINT         NOT NULL DEFAULT 0,
    prompt_tokens              BIGINT         NOT NULL DEFAULT 0,
    completion_tokens          BIGINT         NOT NULL DEFAULT 0,
    total_tokens               BIGINT         NOT NULL DEFAULT 0,
    cached_prompt_tokens       BIGINT         NOT NULL DEFAULT 0,
    -- 5-minute and 1-hour writes together
    cache_write_tokens         BIGINT         NOT NULL DEFAULT 0,
    reasoning_tokens           BIGINT         NOT NULL DEFAULT 0,
    max_prompt_tokens          BIGINT         NOT NULL DEFAULT 0,
    -- estimated_cost of the rows that are not unpriced, and their count and tokens
    cost                       NUMERIC(30,10) NOT NULL DEFAULT 0,
    priced_requests            BIGINT         NOT NULL DEFAULT 0,
    priced_tokens              BIGINT         NOT NULL DEFAULT 0,
    -- the rows the book has a list price for, and the parts of that list price
    listed_requests            BIGINT         NOT NULL DEFAULT 0,
    list_cost                  NUMERIC(30,10) NOT NULL DEFAULT 0,
    input_list_cost            NUMERIC(30,10) NOT NULL DEFAULT 0,
    output_list_cost           NUMERIC(30,10) NOT NULL DEFAULT 0,
    cache_read_list_cost       NUMERIC(30,10) NOT NULL DEFAULT 0,
    cache_read_at_input_cost   NUMERIC(30,10) NOT NULL DEFAULT 0,
    cache_write_list_cost      NUMERIC(30,10) NOT NULL DEFAULT 0,
    cache_write_at_input_cost  NUMERIC(30,10) NOT NULL DEFAULT 0,
    -- requests with no cached prompt token on a model whose price has a cache-read rate
    no_cache_requests          BIGINT         NOT NULL DEFAULT 0,
    no_cache_prompt_tokens     BIGINT         NOT NULL DEFAULT 0,
    no_cache_input_list_cost   NUMERIC(30,10) NOT NULL DEFAULT 0,
    updated_at                 TIMESTAMPTZ    NOT NULL DEFAULT now(),
    PRIMARY KEY (day, tenant_id, provider, model, use_case)
);

SELECT create_hypertable(
    'usage_optimize_daily',
    by_range('day', INTERVAL '30 days'),
    create_default_indexes => FALSE,
    if_not_exists => TRUE
);

-- metric: prompt_tokens (every request), cost (estimated_cost of the requests that are not
-- unpriced), cost_per_1k_tokens (the same requests with at least one token). bucket: b holds the
-- values in (g^(b-1), g^b] with g = 1.01/0.99, so its midpoint 2 g^b / (g + 1) is within 1% of
-- every value in it; -2147483648 holds 0.
CREATE TABLE IF NOT EXISTS usage_optimize_histogram (
    day        TIMESTAMPTZ  NOT NULL,
    tenant_id  VARCHAR(255) NOT NULL,
    provider   VARCHAR(100) NOT NULL,
    model      VARCHAR(100) NOT NULL,
    use_case   TEXT         NOT NULL,
    metric     TEXT         NOT NULL
        CHECK (metric IN ('prompt_tokens', 'cost', 'cost_per_1k_tokens')),
    bucket     INTEGER      NOT NULL,
    requests   BIGINT       NOT NULL DEFAULT 0,
    PRIMARY KEY (day, tenant_id, provider, model, use_case, metric, bucket)
);

SELECT create_hypertable(
    'usage_optimize_histogram',
    by_range('day', INTERVAL '30 days'),
    create_default_indexes => FALSE,
    if_not_exists => TRUE
);
