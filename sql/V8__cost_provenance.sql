-- V8__cost_provenance.sql: the billing dimensions an event can now carry, and how each row's cost
-- was made, so that "why is this row $4.20" is answered from SQL and a re-pricing can be audited.
-- Runs inside one transaction; every statement is idempotent.
--
-- Every new column is nullable without a default: rows stored before this version keep NULL
-- ("not recorded"), which reads as 0 / standard / unknown provenance, and adding such a column
-- to a compressed hypertable touches no existing chunk.
ALTER TABLE gateway_mode_audit
    -- prompt tokens written to a 1-hour cache (cache_write_tokens are 5-minute writes)
    ADD COLUMN IF NOT EXISTS cache_write_1h_tokens INTEGER,
    -- standard | batch | flex | priority; NULL: the event named none (standard)
    ADD COLUMN IF NOT EXISTS service_tier          TEXT
        CHECK (service_tier IN ('standard', 'batch', 'flex', 'priority')),
    -- per-call charges the event counted, e.g. {"web_search": 3}; kept so a re-pricing sees them
    ADD COLUMN IF NOT EXISTS calls                 JSONB,
    -- the provider's list price of the usage when the book knows it, beside estimated_cost
    -- (which is what the tenant is charged: its own cost, its contract's, or the list price)
    ADD COLUMN IF NOT EXISTS list_cost             NUMERIC(20,10),
    -- the price book entry used, e.g. 'anthropic/claude-sonnet-4-5@2025-09-29'
    ADD COLUMN IF NOT EXISTS price_entry           TEXT,
    -- SHA-256 of the price file(s) the row was priced with (sha256sum of the file)
    ADD COLUMN IF NOT EXISTS price_book_version    TEXT,
    -- one line saying how the cost was made: entry and how the model matched, long-context
    -- tier, service tier, tenant rule, or why it is unpriced
    ADD COLUMN IF NOT EXISTS pricing_rule          TEXT,
    -- book: list price; tenant_contract: a tenant's negotiated terms; caller: the event's own
    -- estimated_cost. NULL when unpriced or stored before this version.
    ADD COLUMN IF NOT EXISTS cost_source           TEXT
        CHECK (cost_source IN ('book', 'tenant_contract', 'caller')),
    -- when `processor reprice` last changed the row's cost; NULL: priced on ingestion only
    ADD COLUMN IF NOT EXISTS repriced_at           TIMESTAMPTZ;

-- The audit trail of re-pricing: one row per stored row whose cost a `processor reprice` run
-- changed, with the cost and provenance before and after. Corrections are never updated.
CREATE TABLE IF NOT EXISTS cost_corrections (
    run_id                 UUID           NOT NULL,
    corrected_at           TIMESTAMPTZ    NOT NULL DEFAULT now(),
    id                     UUID           NOT NULL,
    created_at             TIMESTAMPTZ    NOT NULL,
    tenant_id              VARCHAR(255)   NOT NULL,
    provider               VARCHAR(100)   NOT NULL,
    model                  VARCHAR(100)   NOT NULL,
    old_cost               NUMERIC(20,10) NOT NULL,
    new_cost               NUMERIC(20,10) NOT NULL,
    old_status             TEXT           NOT NULL,
    new_status             TEXT           NOT NULL,
    old_price_book_version TEXT,
    new_price_book_version TEXT           NOT NULL,
    new_pricing_rule       TEXT           NOT NULL,
    PRIMARY KEY (run_id, created_at, id)
);
CREATE INDEX IF NOT EXISTS cost_corrections_corrected_idx ON cost_corrections (corrected_at);
