-- Most expensive models: tokens, cost and average tokens per request per provider and model over
-- the last 7 days, most expensive first (the guide's "Most expensive models"), read from the
-- rollups instead of the raw table. Same columns, same numbers.
--
-- The window (now() - 7 days) is assembled from whole UTC days in model_daily, whole hours of the
-- first day in usage_hourly and the first partial hour from the raw table; see
-- daily_token_usage.sql. avg_tokens_per_request is sum(total_tokens) / sum(requests) in numeric,
-- which is exactly how PostgreSQL computes AVG over an integer column.
WITH w AS (
    SELECT since,
           time_bucket(INTERVAL '1 hour', since) + INTERVAL '1 hour' AS first_hour,
           time_bucket(INTERVAL '1 day', since) + INTERVAL '1 day'   AS first_day
    FROM (SELECT now() - INTERVAL '7 days' AS since) s
), parts AS (
    SELECT d.provider, d.model, d.requests, d.total_tokens AS tokens, d.cost
    FROM model_daily d, w
    WHERE d.day >= w.first_day
    UNION ALL
    SELECT h.provider, h.model, h.requests, h.total_tokens, h.cost
    FROM usage_hourly h, w
    WHERE h.bucket >= w.first_hour AND h.bucket < w.first_day
    UNION ALL
    SELECT a.provider, a.model, 1, a.total_tokens, a.estimated_cost
    FROM gateway_mode_audit a, w
    WHERE a.created_at > w.since AND a.created_at < w.first_hour
)
SELECT
    provider,
    model,
    SUM(tokens)::BIGINT                         AS tokens,
    SUM(cost)                                   AS cost,
    SUM(tokens)::NUMERIC / SUM(requests)::NUMERIC AS avg_tokens_per_request
FROM parts
GROUP BY provider, model
ORDER BY cost DESC, provider, model;
