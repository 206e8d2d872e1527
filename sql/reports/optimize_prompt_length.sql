-- Prompt length by model: requests, mean, p50, p95 and max prompt tokens per request, and the
-- share of list cost from input, over the UTC days [:from, :to).
-- Read from the optimization rollup (sql/V14__optimization_rollup.sql), never the raw table;
-- percentiles are the midpoints of log buckets, within 1% of the exact nearest-rank ones.
-- The same query is a panel of grafana/dashboards/optimization.json; `processor report optimize`
-- gives the same figures (store::optimize). Run: psql -v from=2026-02-01 -v to=2026-03-01 -f FILE
WITH h AS (
  SELECT provider || '/' || model AS k, bucket, sum(requests) AS n
  FROM usage_optimize_histogram
  WHERE day >= :'from' AND day < :'to' AND metric = 'prompt_tokens'
  GROUP BY k, bucket
), ranked AS (
  SELECT k, bucket,
         sum(n) OVER (PARTITION BY k ORDER BY bucket) AS seen,
         sum(n) OVER (PARTITION BY k) AS total
  FROM h
), p AS (
  SELECT k,
         min(bucket) FILTER (WHERE seen >= ceil(0.5 * total)) AS b50,
         min(bucket) FILTER (WHERE seen >= ceil(0.95 * total)) AS b95
  FROM ranked GROUP BY k
),
s AS (
  SELECT provider || '/' || model AS k, sum(requests) AS requests, sum(prompt_tokens) AS prompt_tokens,
         max(max_prompt_tokens) AS max_prompt_tokens, sum(input_list_cost) AS input_cost,
         sum(list_cost) AS list_cost
  FROM usage_optimize_daily
  WHERE day >= :'from' AND day < :'to'
  GROUP BY 1
)
SELECT s.k AS "Model", s.requests AS "Requests",
       round(s.prompt_tokens::numeric / NULLIF(s.requests, 0), 1) AS "Mean",
       round((CASE WHEN p.b50 = -2147483648 THEN 0 ELSE 2 * power((1.01/0.99)::float8, p.b50) / ((1.01/0.99)::float8 + 1) END)::numeric) AS "p50",
       round((CASE WHEN p.b95 = -2147483648 THEN 0 ELSE 2 * power((1.01/0.99)::float8, p.b95) / ((1.01/0.99)::float8 + 1) END)::numeric) AS "p95",
       s.max_prompt_tokens AS "Max",
       s.input_cost / NULLIF(s.list_cost, 0) AS "Input share"
FROM s LEFT JOIN p ON p.k = s.k
ORDER BY 3 DESC, 1;
