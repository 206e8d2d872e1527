-- Daily token usage: tokens and cost per day over the last 30 days, from the raw audit table.
-- The guide's query, verbatim.
SELECT
DATE(created_at) as date,
SUM(total_tokens) as tokens,
SUM(estimated_cost) as cost
FROM gateway_mode_audit
WHERE created_at > NOW() - INTERVAL '30 days'
GROUP BY DATE(created_at)
ORDER BY date;
