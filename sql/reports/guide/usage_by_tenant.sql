-- Usage by tenant: tokens and cost per tenant over the last 30 days, most expensive first, from
-- the raw audit table. The guide's query, verbatim.
SELECT
tenant_id,
SUM(total_tokens) as tokens,
SUM(estimated_cost) as cost
FROM gateway_mode_audit
WHERE created_at > NOW() - INTERVAL '30 days'
GROUP BY tenant_id
ORDER BY cost DESC;
