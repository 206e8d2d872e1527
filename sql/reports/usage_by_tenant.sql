-- Usage by tenant: tokens and cost per tenant over the last 30 days, most expensive first (the
-- guide's "Usage by tenant"), read from the rollups instead of the raw table. Same columns,
-- same numbers.
--
-- The window (now() - 30 days) is assembled from whole UTC days in tenant_daily, whole hours of
-- the first day in usage_hourly and the first partial hour from the raw table; see
-- daily_token_usage.sql. Ties in cost are ordered by tenant_id so the output is stable.
WITH w AS (
    SELECT since,
           time_bucket(INTERVAL '1 hour', since) + INTERVAL '1 hour' AS first_hour,
           time_bucket(INTERVAL '1 day', since) + INTERVAL '1 day'   AS first_day
    FROM (SELECT now() - INTERVAL '30 days' AS since) s
), parts AS (
    SELECT d.tenant_id, d.total_tokens AS tokens, d.cost
    FROM tenant_daily d, w
    WHERE d.day >= w.first_day
    UNION ALL
    SELECT h.tenant_id, h.total_tokens, h.cost
    FROM usage_hourly h, w
    WHERE h.bucket >= w.first_hour AND h.bucket < w.first_day
    UNION ALL
    SELECT a.tenant_id, a.total_tokens, a.estimated_cost
    FROM gateway_mode_audit a, w
    WHERE a.created_at > w.since AND a.created_at < w.first_hour
)
SELECT
    tenant_id,
    SUM(tokens)::BIGINT AS tokens,
    SUM(cost)           AS cost
FROM parts
GROUP BY tenant_id
ORDER BY cost DESC, tenant_id;
