-- Most expensive models: tokens, cost and average tokens per request per provider and model over
-- the last 7 days, most expensive first, from the raw audit table. The guide's query, verbatim.
SELECT
provider,
model,
SUM(total_tokens) as tokens,
SUM(estimated_cost) as cost,
AVG(total_tokens) as avg_tokens_per_request
FROM gateway_mode_audit
WHERE created_at > NOW() - INTERVAL '7 days'
GROUP BY provider, model
ORDER BY cost DESC;
