-- Daily token usage: tokens and cost per day over the last 30 days (the guide's "Daily token
-- usage"), read from the rollups instead of the raw table. Same columns, same numbers.
--
-- The guide's window starts at an arbitrary instant (now() - 30 days), so it is assembled from three
-- parts that never overlap: whole UTC days from tenant_daily, the whole hours of the first, partial
-- day from usage_hourly, and the rows of the first, partial hour from the raw table. That reads at
-- most ~31 daily rows per tenant, 24 hourly buckets and one hour of raw rows, whatever the traffic.
-- Dates are UTC dates; the guide's DATE(created_at) uses the session time zone, so the two agree
-- when the session runs in UTC (the TimescaleDB image's default).
WITH w AS (
    SELECT since,
           time_bucket(INTERVAL '1 hour', since) + INTERVAL '1 hour' AS first_hour,
           time_bucket(INTERVAL '1 day', since) + INTERVAL '1 day'   AS first_day
    FROM (SELECT now() - INTERVAL '30 days' AS since) s
), parts AS (
    SELECT d.day AS ts, d.total_tokens AS tokens, d.cost
    FROM tenant_daily d, w
    WHERE d.day >= w.first_day
    UNION ALL
    SELECT h.bucket, h.total_tokens, h.cost
    FROM usage_hourly h, w
    WHERE h.bucket >= w.first_hour AND h.bucket < w.first_day
    UNION ALL
    SELECT a.created_at, a.total_tokens, a.estimated_cost
    FROM gateway_mode_audit a, w
    WHERE a.created_at > w.since AND a.created_at < w.first_hour
)
SELECT
    (ts AT TIME ZONE 'UTC')::date AS date,
    SUM(tokens)::BIGINT           AS tokens,
    SUM(cost)                     AS cost
FROM parts
GROUP BY 1
ORDER BY date;
