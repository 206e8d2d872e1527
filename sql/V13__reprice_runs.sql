-- V13__reprice_runs.sql: `processor reprice` keeps tenants apart and survives an interruption.
-- Runs inside one transaction; every statement is idempotent.
--
-- Event ids are unique per tenant (V7), so two tenants' rows can share `(created_at, id)`: the
-- corrections' key must name the tenant too, or the second tenant's correction of a run is
-- dropped as a duplicate of the first's.
ALTER TABLE cost_corrections DROP CONSTRAINT IF EXISTS cost_corrections_pkey;
ALTER TABLE cost_corrections ADD CONSTRAINT cost_corrections_pkey
    PRIMARY KEY (run_id, tenant_id, created_at, id);

-- One row per non-dry `processor reprice` run; `finished_at` NULL while it runs or after it was
-- interrupted.
CREATE TABLE IF NOT EXISTS reprice_runs (
    run_id             UUID        PRIMARY KEY,
    started_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at        TIMESTAMPTZ,
    from_day           DATE        NOT NULL,
    to_day             DATE        NOT NULL,
    tenant_id          TEXT,
    provider           TEXT,
    model              TEXT,
    price_book_version TEXT        NOT NULL
);

-- The UTC days whose rollups (continuous aggregates) a run changed and has not re-materialized
-- yet. Written in the transaction that changes the rows, deleted once the days are refreshed
-- (a refresh cannot run inside a transaction), so a run interrupted between the two leaves them
-- here and the next run refreshes them first.
CREATE TABLE IF NOT EXISTS reprice_pending_days (
    run_id UUID NOT NULL REFERENCES reprice_runs (run_id) ON DELETE CASCADE,
    day    DATE NOT NULL,
    PRIMARY KEY (run_id, day)
);
