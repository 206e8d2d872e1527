-- V18__budget_scopes_and_rolling_periods.sql: rolling 30-day budget periods; budgets of one user.
-- Runs inside one transaction; every statement is idempotent.
--
-- A `rolling_30d` budget's period is the trailing 30 local days, today included, moving at each
-- local midnight. Its `budget_spend` rows are keyed, like every period's, by the window's start:
-- a new window (a new row) each day, computed from the audit table when first needed and then
-- kept current by the batches, which add a late event to every window up to today's that holds
-- it (docs/design.md, "Rolling periods").
ALTER TABLE budgets DROP CONSTRAINT IF EXISTS budgets_period_check;
ALTER TABLE budgets ADD CONSTRAINT budgets_period_check
    CHECK (period IN ('daily', 'weekly', 'monthly', 'rolling_30d'));

-- A budget may be narrowed to one user of its tenant (the events' `user_id`), like it may be to a
-- provider, a model or a label value; NULL counts every user's usage together. Its spend stays one
-- row per budget, tenant and period: only that user's usage counts toward it.
ALTER TABLE budgets ADD COLUMN IF NOT EXISTS user_id TEXT;
