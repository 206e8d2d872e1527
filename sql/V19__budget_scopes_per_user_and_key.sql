-- V19__budget_scopes_per_user_and_key.sql: budgets that apply to every user separately
-- (`user_id = '*'`), budgets of one API key, and forecast alerts in the alert outbox. Runs inside
-- one transaction; every statement is idempotent.
--
-- A budget with `user_id = '*'` keeps its spend, holds, log and alerts per user, the way one
-- with `tenant_id = '*'` keeps them per tenant: the key gains `user_id`. '' is the key of every
-- other budget (whose spend is one row for all the users it counts) and, for an each-user
-- budget, of the events and reservations that name no user (docs/design.md, "Budget scopes").
ALTER TABLE budget_spend ADD COLUMN IF NOT EXISTS user_id TEXT NOT NULL DEFAULT '';
ALTER TABLE budget_reservation_holds ADD COLUMN IF NOT EXISTS user_id TEXT NOT NULL DEFAULT '';
ALTER TABLE budget_reservation_log ADD COLUMN IF NOT EXISTS user_id TEXT NOT NULL DEFAULT '';
ALTER TABLE budget_alerts ADD COLUMN IF NOT EXISTS user_id TEXT NOT NULL DEFAULT '';

-- What an alert row says: a threshold crossing (`threshold`), or a burn-rate forecast above the
-- amount (`forecast`, threshold 100), raised once per period and resolved (`resolved_at`, pushed
-- again with its end) when the forecast drops back below.
ALTER TABLE budget_alerts ADD COLUMN IF NOT EXISTS kind TEXT NOT NULL DEFAULT 'threshold';
ALTER TABLE budget_alerts ADD COLUMN IF NOT EXISTS resolved_at TIMESTAMPTZ;
ALTER TABLE budget_alerts DROP CONSTRAINT IF EXISTS budget_alerts_kind_check;
ALTER TABLE budget_alerts ADD CONSTRAINT budget_alerts_kind_check
    CHECK (kind IN ('threshold', 'forecast'));

-- The primary keys gain the user (and the alerts their kind); a key already widened is kept.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_index i JOIN pg_attribute a
          ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
        WHERE i.indrelid = 'budget_spend'::regclass AND i.indisprimary AND a.attname = 'user_id'
    ) THEN
        ALTER TABLE budget_spend DROP CONSTRAINT budget_spend_pkey;
        ALTER TABLE budget_spend ADD PRIMARY KEY (budget_id, tenant_id, user_id, period_start);
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_index i JOIN pg_attribute a
          ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
        WHERE i.indrelid = 'budget_alerts'::regclass AND i.indisprimary AND a.attname = 'kind'
    ) THEN
        ALTER TABLE budget_alerts DROP CONSTRAINT budget_alerts_pkey;
        ALTER TABLE budget_alerts
            ADD PRIMARY KEY (budget_id, tenant_id, user_id, period_start, kind, threshold);
    END IF;
END $$;

DROP INDEX IF EXISTS budget_reservation_log_budget_idx;
CREATE INDEX IF NOT EXISTS budget_reservation_log_key_idx
    ON budget_reservation_log (budget_id, tenant_id, user_id, seq);

-- The spend log of V15, per user: the holds summed are the changed row's user's.
CREATE OR REPLACE FUNCTION budget_reservation_log_spend() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    budget_amount NUMERIC;
    delta         NUMERIC;
    changed       budget_spend;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
        delta := -OLD.spend_usd;
    ELSE
        changed := NEW;
        delta := NEW.spend_usd - CASE WHEN TG_OP = 'UPDATE' THEN OLD.spend_usd ELSE 0 END;
    END IF;
    IF delta = 0 THEN
        RETURN NULL;
    END IF;
    SELECT amount_usd INTO budget_amount FROM budgets WHERE id = changed.budget_id AND hard_limit;
    IF budget_amount IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO budget_reservation_log (budget_id, tenant_id, user_id, period_start, kind,
                                        delta_spend_usd, delta_reserved_usd, spend_usd,
                                        reserved_usd, amount_usd)
    VALUES (changed.budget_id, changed.tenant_id, changed.user_id, changed.period_start, 'spend',
            delta, 0,
            changed.spend_usd + CASE WHEN TG_OP = 'DELETE' THEN delta ELSE 0 END,
            (SELECT coalesce(sum(h.amount_usd), 0) FROM budget_reservation_holds AS h
             WHERE h.budget_id = changed.budget_id AND h.tenant_id = changed.tenant_id
               AND h.user_id = changed.user_id),
            budget_amount);
    RETURN NULL;
END $$;

-- Budgets of one API key: the key's name (never its hash), which the gateway stamps on each event
-- it appends from the key that authenticated it; the audit row keeps it. Nullable, no default:
-- adding it to the compressed hypertable rewrites nothing, and the guide's columns and queries
-- stay as they are.
ALTER TABLE budgets ADD COLUMN IF NOT EXISTS api_key TEXT;
ALTER TABLE gateway_mode_audit ADD COLUMN IF NOT EXISTS api_key TEXT;
