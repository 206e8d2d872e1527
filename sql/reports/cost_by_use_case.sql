-- Cost by use case: cost and tokens per tenant and value of each attribution label key (the
-- processor's `attribution.labels`, default `use_case`) over the last 30 UTC days, today included,
-- most expensive first. Read from the daily rollup usage_attribution_daily
-- (sql/V9__use_case_rollup.sql), never from the raw table. Usage without the label is the value
-- '(unlabelled)', so per tenant and key the values sum to the tenant's whole cost.
-- `processor report` runs the same query over its --days window (store::attribution).
SELECT tenant_id, label_key, label_value,
       sum(requests)::BIGINT             AS requests,
       sum(prompt_tokens)::BIGINT        AS prompt_tokens,
       sum(completion_tokens)::BIGINT    AS completion_tokens,
       sum(total_tokens)::BIGINT         AS total_tokens,
       sum(cost)                         AS cost,
       sum(unpriced_requests)::BIGINT    AS unpriced_requests
FROM usage_attribution_daily
WHERE day >= time_bucket(INTERVAL '1 day', now()) - INTERVAL '29 days'
GROUP BY tenant_id, label_key, label_value
ORDER BY tenant_id, label_key, sum(cost) DESC, label_value;
