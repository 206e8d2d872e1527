-- V3__budgets.sql: budgets, their spend per tenant and period, and the threshold crossings with
-- their delivery outbox. Runs inside one transaction; every statement is idempotent.
--
-- The processor adds each new audit row's cost to budget_spend and records crossings in
-- budget_alerts inside the batch transaction that inserts the row, so spend and crossings are
-- exact through redelivery, crashes and replays (docs/design.md, "Budgets and alerts").

-- A budget's definition. The gateway's admin API and `processor budgets apply` write it; the
-- processor reads it in every batch transaction, so a change applies to the next batch.
CREATE TABLE IF NOT EXISTS budgets (
    id          UUID           PRIMARY KEY,
    name        TEXT           NOT NULL UNIQUE,
    -- '*' = every tenant, each tenant with its own spend.
    tenant_id   TEXT           NOT NULL,
    provider    TEXT,
    model       TEXT,
    label_key   TEXT,
    label_value TEXT,
    period      TEXT           NOT NULL CHECK (period IN ('daily', 'monthly')),
    -- IANA name; periods are calendar days/months in this zone.
    timezone    TEXT           NOT NULL DEFAULT 'UTC',
    amount_usd  NUMERIC(20,10) NOT NULL CHECK (amount_usd > 0),
    -- Percent of amount_usd, ascending.
    thresholds  SMALLINT[]     NOT NULL DEFAULT '{50,75,90,100}',
    hard_limit  BOOLEAN        NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMPTZ    NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ    NOT NULL DEFAULT now(),
    CHECK ((label_key IS NULL) = (label_value IS NULL))
);

-- Spend of one budget for one tenant in one period. Created by the first batch that has a
-- matching event in the period, initialised from the audit table for the whole period (so a
-- budget created mid-period counts from the period's start), then incremented by each batch's
-- new rows. Editing a budget's scope, period or time zone deletes its rows; they are rebuilt the
-- same way.
CREATE TABLE IF NOT EXISTS budget_spend (
    budget_id    UUID           NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
    tenant_id    TEXT           NOT NULL,
    period_start TIMESTAMPTZ    NOT NULL,
    period_end   TIMESTAMPTZ    NOT NULL,
    spend_usd    NUMERIC(20,10) NOT NULL,
    updated_at   TIMESTAMPTZ    NOT NULL DEFAULT now(),
    PRIMARY KEY (budget_id, tenant_id, period_start)
);

-- The current period's rows, for the spend-ratio gauge and the status endpoint.
CREATE INDEX IF NOT EXISTS budget_spend_period_end_idx ON budget_spend (period_end);

-- One row per threshold crossing: the primary key makes each threshold of each period fire once,
-- whatever is redelivered or replayed. The row snapshots what its alert says (name, period,
-- amount, spend) and is kept when the budget is deleted, as history. The remaining columns are
-- the delivery outbox: the processor pushes rows to Alertmanager and the optional webhook until
-- each accepts them.
CREATE TABLE IF NOT EXISTS budget_alerts (
    budget_id                 UUID           NOT NULL,
    tenant_id                 TEXT           NOT NULL,
    period_start              TIMESTAMPTZ    NOT NULL,
    threshold                 SMALLINT       NOT NULL,
    period_end                TIMESTAMPTZ    NOT NULL,
    budget_name               TEXT           NOT NULL,
    period                    TEXT           NOT NULL,
    timezone                  TEXT           NOT NULL,
    -- What the budget is narrowed to beyond the tenant ('' when nothing), for the alert text.
    narrowing                 TEXT           NOT NULL DEFAULT '',
    amount_usd                NUMERIC(20,10) NOT NULL,
    spend_usd                 NUMERIC(20,10) NOT NULL,
    crossed_at                TIMESTAMPTZ    NOT NULL DEFAULT now(),
    alertmanager_delivered_at TIMESTAMPTZ,
    webhook_delivered_at      TIMESTAMPTZ,
    attempts                  INTEGER        NOT NULL DEFAULT 0,
    next_attempt_at           TIMESTAMPTZ    NOT NULL DEFAULT now(),
    last_error                TEXT,
    PRIMARY KEY (budget_id, tenant_id, period_start, threshold)
);

CREATE INDEX IF NOT EXISTS budget_alerts_outbox_idx
    ON budget_alerts (next_attempt_at)
    WHERE alertmanager_delivered_at IS NULL OR webhook_delivered_at IS NULL;
