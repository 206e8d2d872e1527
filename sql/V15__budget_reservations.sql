-- V15__budget_reservations.sql: reservations against budgets before a call is made, their holds
-- on each budget, and the log of every change to a hard-limited budget's spend and holds.
-- Runs inside one transaction; every statement is idempotent.
--
-- A reservation is granted only when, for every hard-limited budget that applies, spend + open
-- holds + amount <= amount_usd. Exactness comes from the row locks: the granting transaction holds
-- the budgets `FOR SHARE` and their current `budget_spend` rows `FOR UPDATE` (in key order, the
-- batch's order) while it reads the holds and inserts its own, so grants, releases and the
-- batches that add spend to the same row run one after another (docs/design.md, "Budget
-- reservations").

-- A budget may ask for its burn-rate forecast to be exported and alerted on (docs/design.md,
-- "Burn-rate forecasts").
ALTER TABLE budgets ADD COLUMN IF NOT EXISTS forecast_alert BOOLEAN NOT NULL DEFAULT FALSE;

-- Weekly periods: Monday 00:00 to Monday 00:00 in the budget's time zone.
ALTER TABLE budgets DROP CONSTRAINT IF EXISTS budgets_period_check;
ALTER TABLE budgets ADD CONSTRAINT budgets_period_check
    CHECK (period IN ('daily', 'weekly', 'monthly'));

-- One reservation: what the caller asked for and how it ended. `released_at` is set when it is
-- settled by a usage event carrying its id, cancelled by `DELETE`, or found expired.
CREATE TABLE IF NOT EXISTS budget_reservations (
    id              UUID           PRIMARY KEY,
    tenant_id       TEXT           NOT NULL,
    user_id         TEXT,
    api_key         TEXT,
    provider        TEXT,
    model           TEXT,
    labels          JSONB          NOT NULL DEFAULT '{}',
    amount_usd      NUMERIC(20,10) NOT NULL CHECK (amount_usd > 0),
    -- A retried POST with the same key gets the same reservation; the request's fingerprint
    -- tells a retry from a different request reusing the key.
    idempotency_key TEXT,
    request_sha256  BYTEA          NOT NULL,
    created_at      TIMESTAMPTZ    NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ    NOT NULL,
    released_at     TIMESTAMPTZ,
    release_reason  TEXT           CHECK (release_reason IN ('settled', 'cancelled', 'expired')),
    -- The usage event that settled it.
    settled_by      UUID,
    -- The grant's answer (the budgets and what remained), returned again to a retried POST.
    answer          JSONB          NOT NULL DEFAULT '{}',
    CHECK ((released_at IS NULL) = (release_reason IS NULL)),
    UNIQUE (tenant_id, idempotency_key)
);

CREATE INDEX IF NOT EXISTS budget_reservations_open_idx
    ON budget_reservations (expires_at) WHERE released_at IS NULL;

-- What an open reservation holds on each budget that applies to it, for the tenant it was made
-- for. Deleted when the reservation is released. A hold counts toward the budget's current
-- period whatever period it was made in: the call it stands for has not been reported yet.
CREATE TABLE IF NOT EXISTS budget_reservation_holds (
    budget_id      UUID           NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    tenant_id      TEXT           NOT NULL,
    reservation_id UUID           NOT NULL REFERENCES budget_reservations (id) ON DELETE CASCADE,
    amount_usd     NUMERIC(20,10) NOT NULL,
    expires_at     TIMESTAMPTZ    NOT NULL,
    PRIMARY KEY (budget_id, tenant_id, reservation_id)
);

CREATE INDEX IF NOT EXISTS budget_reservation_holds_reservation_idx
    ON budget_reservation_holds (reservation_id);

-- Every change to a hard-limited budget's spend or holds, in the order the row locks let them
-- happen: `seq` is drawn while the writer holds the budget's current spend row, so for one budget
-- and tenant it is the order of the changes. `xact` groups one transaction's entries (an instant
-- is the end of a transaction). The deltas replay the budget's history; the totals are what the
-- writer saw. Operators may delete old entries; nothing reads them but audits and tests.
CREATE TABLE IF NOT EXISTS budget_reservation_log (
    seq                BIGINT         GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                 TIMESTAMPTZ    NOT NULL DEFAULT clock_timestamp(),
    xact               BIGINT         NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    budget_id          UUID           NOT NULL,
    tenant_id          TEXT           NOT NULL,
    period_start       TIMESTAMPTZ    NOT NULL,
    kind               TEXT           NOT NULL
        CHECK (kind IN ('grant', 'settled', 'cancelled', 'expired', 'spend')),
    reservation_id     UUID,
    delta_spend_usd    NUMERIC(20,10) NOT NULL,
    delta_reserved_usd NUMERIC(20,10) NOT NULL,
    spend_usd          NUMERIC(20,10) NOT NULL,
    reserved_usd       NUMERIC(20,10) NOT NULL,
    amount_usd         NUMERIC(20,10) NOT NULL
);

CREATE INDEX IF NOT EXISTS budget_reservation_log_budget_idx
    ON budget_reservation_log (budget_id, tenant_id, seq);
CREATE INDEX IF NOT EXISTS budget_reservation_log_at_idx ON budget_reservation_log (at);

-- Spend changes reach the log from the table itself, so every writer of spend (the batch, the
-- status endpoint creating a row, a re-pricing's corrections, an edit resetting spend) is
-- logged. Only hard-limited budgets: nothing is enforced on the others.
CREATE OR REPLACE FUNCTION budget_reservation_log_spend() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    budget_amount NUMERIC;
    delta         NUMERIC;
    changed       budget_spend;
BEGIN
    -- A delete (an edit resetting a budget's spend) logs the spend going away, so that the
    -- rebuilt row's insert does not count it twice in a replay.
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
    INSERT INTO budget_reservation_log (budget_id, tenant_id, period_start, kind,
                                        delta_spend_usd, delta_reserved_usd, spend_usd,
                                        reserved_usd, amount_usd)
    VALUES (changed.budget_id, changed.tenant_id, changed.period_start, 'spend', delta, 0,
            changed.spend_usd + CASE WHEN TG_OP = 'DELETE' THEN delta ELSE 0 END,
            (SELECT coalesce(sum(h.amount_usd), 0) FROM budget_reservation_holds AS h
             WHERE h.budget_id = changed.budget_id AND h.tenant_id = changed.tenant_id),
            budget_amount);
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS budget_reservation_log_spend ON budget_spend;
CREATE TRIGGER budget_reservation_log_spend
    AFTER INSERT OR UPDATE OF spend_usd OR DELETE ON budget_spend
    FOR EACH ROW EXECUTE FUNCTION budget_reservation_log_spend();
