-- V2__rollups.sql: the reporting rollups (continuous aggregates), their refresh policies, and
-- compression of raw audit chunks.
--
-- Runs inside one transaction: continuous aggregates are created WITH NO DATA (creating one WITH
-- DATA refreshes it, and a refresh cannot run inside a transaction). The first refresh is left to
-- the policies, or to `CALL refresh_continuous_aggregate(...)` where no job scheduler runs.
--
-- Every rollup has real-time aggregation on (materialized_only = false): a query returns the
-- materialized buckets plus the not-yet-materialized rows computed on the fly, so reports include
-- the latest minutes. Real-time aggregation only covers time after the rollup's watermark; rows
-- that arrive late for an already materialized bucket (the gateway accepts events up to 35 days
-- old) are picked up by the next refresh that covers that bucket, see the policies below.

-- Hourly usage per tenant, provider and model: the base every other rollup is built on.
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT
    time_bucket(INTERVAL '1 hour', created_at)          AS bucket,
    tenant_id,
    provider,
    model,
    count(*)                                            AS requests,
    sum(prompt_tokens)::BIGINT                          AS prompt_tokens,
    sum(completion_tokens)::BIGINT                      AS completion_tokens,
    sum(total_tokens)::BIGINT                           AS total_tokens,
    sum(cached_prompt_tokens)::BIGINT                   AS cached_prompt_tokens,
    sum(reasoning_tokens)::BIGINT                       AS reasoning_tokens,
    sum(estimated_cost)                                 AS cost,
    count(*) FILTER (WHERE pricing_status = 'unpriced') AS unpriced_requests
FROM gateway_mode_audit
GROUP BY bucket, tenant_id, provider, model
WITH NO DATA;

-- Daily rollups are hierarchical (built on usage_hourly), so a refresh reads hourly buckets, not
-- raw rows. Days are UTC days (time_bucket's default origin).
CREATE MATERIALIZED VIEW IF NOT EXISTS usage_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT
    time_bucket(INTERVAL '1 day', bucket)  AS day,
    tenant_id,
    provider,
    model,
    sum(requests)::BIGINT                  AS requests,
    sum(prompt_tokens)::BIGINT             AS prompt_tokens,
    sum(completion_tokens)::BIGINT         AS completion_tokens,
    sum(total_tokens)::BIGINT              AS total_tokens,
    sum(cached_prompt_tokens)::BIGINT      AS cached_prompt_tokens,
    sum(reasoning_tokens)::BIGINT          AS reasoning_tokens,
    sum(cost)                              AS cost,
    sum(unpriced_requests)::BIGINT         AS unpriced_requests
FROM usage_hourly
GROUP BY day, tenant_id, provider, model
WITH NO DATA;

-- Per tenant per day: tenant reports and finance exports.
CREATE MATERIALIZED VIEW IF NOT EXISTS tenant_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT
    time_bucket(INTERVAL '1 day', bucket)  AS day,
    tenant_id,
    sum(requests)::BIGINT                  AS requests,
    sum(prompt_tokens)::BIGINT             AS prompt_tokens,
    sum(completion_tokens)::BIGINT         AS completion_tokens,
    sum(total_tokens)::BIGINT              AS total_tokens,
    sum(cached_prompt_tokens)::BIGINT      AS cached_prompt_tokens,
    sum(reasoning_tokens)::BIGINT          AS reasoning_tokens,
    sum(cost)                              AS cost,
    sum(unpriced_requests)::BIGINT         AS unpriced_requests
FROM usage_hourly
GROUP BY day, tenant_id
WITH NO DATA;

-- Per provider and model per day: model cost reviews.
CREATE MATERIALIZED VIEW IF NOT EXISTS model_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT
    time_bucket(INTERVAL '1 day', bucket)  AS day,
    provider,
    model,
    sum(requests)::BIGINT                  AS requests,
    sum(prompt_tokens)::BIGINT             AS prompt_tokens,
    sum(completion_tokens)::BIGINT         AS completion_tokens,
    sum(total_tokens)::BIGINT              AS total_tokens,
    sum(cached_prompt_tokens)::BIGINT      AS cached_prompt_tokens,
    sum(reasoning_tokens)::BIGINT          AS reasoning_tokens,
    sum(cost)                              AS cost,
    sum(unpriced_requests)::BIGINT         AS unpriced_requests
FROM usage_hourly
GROUP BY day, provider, model
WITH NO DATA;

-- Refresh policies. The window reaches back 36 days for hourly (the 35-day backfill window plus
-- a day of margin), so an event accepted late is still materialized into its bucket. That is
-- cheap: a refresh only recomputes buckets the invalidation log marks as changed, so the old part
-- of the window costs nothing when no late events came in. The window ends before the open
-- bucket, which real-time aggregation serves. The daily rollups read usage_hourly, so their
-- window is one day longer and they run after it has had a chance to materialize.
SELECT add_continuous_aggregate_policy('usage_hourly',
    start_offset      => INTERVAL '36 days',
    end_offset        => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes',
    if_not_exists     => TRUE);
SELECT add_continuous_aggregate_policy('usage_daily',
    start_offset      => INTERVAL '37 days',
    end_offset        => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour',
    if_not_exists     => TRUE);
SELECT add_continuous_aggregate_policy('tenant_daily',
    start_offset      => INTERVAL '37 days',
    end_offset        => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour',
    if_not_exists     => TRUE);
SELECT add_continuous_aggregate_policy('model_daily',
    start_offset      => INTERVAL '37 days',
    end_offset        => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour',
    if_not_exists     => TRUE);

-- Compression of raw chunks older than 7 days. Segmenting by tenant keeps one tenant's rows
-- together (tenant reports decompress only their segments); ordering by the primary key's columns
-- matches the reports and lets duplicate checks skip compressed batches by their min/max.
-- Late events still insert into compressed chunks, and INSERT ... ON CONFLICT DO NOTHING still
-- detects duplicates there. Changing compression settings is refused once chunks are compressed,
-- hence the guard that makes a re-run a no-op.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM timescaledb_information.hypertables
        WHERE hypertable_schema = current_schema()
          AND hypertable_name = 'gateway_mode_audit'
          AND compression_enabled
    ) THEN
        ALTER TABLE gateway_mode_audit SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'tenant_id',
            timescaledb.compress_orderby = 'created_at DESC, id'
        );
    END IF;
END
$$;
SELECT add_compression_policy('gateway_mode_audit', compress_after => INTERVAL '7 days',
    if_not_exists => TRUE);

-- Retention is deployment policy, not schema: no retention policy is added here. To keep raw rows
-- for, say, 400 days while the rollups keep everything:
--   SELECT add_retention_policy('gateway_mode_audit', drop_after => INTERVAL '400 days');
