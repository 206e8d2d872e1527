-- Cost per request by model and use case: mean, p50 and p95 cost per request (requests with a
-- cost) and cost per 1K tokens, over the UTC days [:from, :to).
-- Read from the optimization rollup (sql/V14__optimization_rollup.sql), never the raw table;
-- percentiles are the midpoints of log buckets, within 1% of the exact nearest-rank ones.
-- The same query is a panel of grafana/dashboards/optimization.json; `processor report optimize`
-- gives the same figures (store::optimize). Run: psql -v from=2026-02-01 -v to=2026-03-01 -f FILE
WITH h AS (
  SELECT provider || '/' || model AS k, use_case, bucket, sum(requests) AS n
  FROM usage_optimize_histogram
  WHERE day >= :'from' AND day < :'to' AND metric = 'cost'
  GROUP BY k, use_case, bucket
), ranked AS (
  SELECT k, use_case, bucket,
         sum(n) OVER (PARTITION BY k, use_case ORDER BY bucket) AS seen,
         sum(n) OVER (PARTITION BY k, use_case) AS total
  FROM h
), p AS (
  SELECT k, use_case,
         min(bucket) FILTER (WHERE seen >= ceil(0.5 * total)) AS b50,
         min(bucket) FILTER (WHERE seen >= ceil(0.95 * total)) AS b95
  FROM ranked GROUP BY k, use_case
),
s AS (
  SELECT provider || '/' || model AS k, use_case, sum(priced_requests) AS priced,
         sum(cost) AS cost, sum(priced_tokens) AS tokens
  FROM usage_optimize_daily
  WHERE day >= :'from' AND day < :'to'
  GROUP BY 1, 2
)
SELECT s.k AS "Model", s.use_case AS "Use case", s.priced AS "Priced requests",
       s.cost / NULLIF(s.priced, 0) AS "Mean cost per request",
       CASE WHEN p.b50 = -2147483648 THEN 0 ELSE 2 * power((1.01/0.99)::float8, p.b50) / ((1.01/0.99)::float8 + 1) END AS "p50",
       CASE WHEN p.b95 = -2147483648 THEN 0 ELSE 2 * power((1.01/0.99)::float8, p.b95) / ((1.01/0.99)::float8 + 1) END AS "p95",
       s.cost * 1000 / NULLIF(s.tokens, 0) AS "Cost per 1K tokens"
FROM s LEFT JOIN p ON p.k = s.k AND p.use_case = s.use_case
ORDER BY 4 DESC NULLS LAST, 1, 2;
