-- What caching saved by model and use case, at list prices, over the UTC days [:from, :to).
-- Read from the optimization rollup (sql/V14__optimization_rollup.sql), never the raw table;
-- percentiles are the midpoints of log buckets, within 1% of the exact nearest-rank ones.
-- The same query is a panel of grafana/dashboards/optimization.json; `processor report optimize`
-- gives the same figures (store::optimize). Run: psql -v from=2026-02-01 -v to=2026-03-01 -f FILE
SELECT provider || '/' || model AS "Model", use_case AS "Use case",
       sum(cached_prompt_tokens)::numeric / NULLIF(sum(prompt_tokens), 0) AS "Cache hit ratio",
       sum(cache_read_at_input_cost) AS "Cached at input rate",
       sum(cache_read_list_cost) AS "Cached cost",
       sum(cache_write_list_cost - cache_write_at_input_cost) AS "Cache-write overhead",
       sum(cache_read_at_input_cost - cache_read_list_cost
           - (cache_write_list_cost - cache_write_at_input_cost)) AS "Net saving"
FROM usage_optimize_daily
WHERE day >= :'from' AND day < :'to'
GROUP BY 1, 2
ORDER BY 7 DESC, 1, 2;
