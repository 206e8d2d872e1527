-- V6__unbounded_amounts.sql: sums of accepted events are stored in unbounded columns.
-- Runs inside one transaction; every statement is idempotent.
--
-- Amounts that accumulate accepted events are unbounded, so no event the gateway accepts can
-- overflow them. A single event's cost is at most 1,000,000 USD with 10 decimal places (the
-- event rules), which NUMERIC(20,10) holds; but a budget's spend is the sum of any number of such
-- events, and 11,000 events at the limit already exceed NUMERIC(20,10)'s 10 integer digits. An
-- overflow there (SQLSTATE 22003) used to fail every batch holding the tenant's next event.
--
-- NUMERIC(20,10) to NUMERIC is binary-compatible: PostgreSQL changes the catalog only, without
-- rewriting the table or its index, and running it again is a no-op.
--
-- Checked and left as they are:
--  * gateway_mode_audit.estimated_cost NUMERIC(20,10) holds one event's cost (at most 1e6 USD,
--    scale 10). Its rollup sums (`sum(estimated_cost)`, `sum(cost)`) are plain NUMERIC.
--  * the token columns are INTEGER, and the event rules cap every count at 2,147,483,647
--    (`ledger::MAX_TOKEN_COUNT`); the rollups sum them into BIGINT.
--  * budgets.amount_usd and budget_alerts.amount_usd are set by an operator, not by events.
ALTER TABLE budget_spend ALTER COLUMN spend_usd TYPE NUMERIC;
ALTER TABLE budget_alerts ALTER COLUMN spend_usd TYPE NUMERIC;
