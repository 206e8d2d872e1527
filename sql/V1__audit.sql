-- V1__audit.sql: the audit table every usage event lands in, and the processor's stored Kafka
-- offsets. Runs inside one transaction; every statement is idempotent so a re-run is a no-op.

CREATE EXTENSION IF NOT EXISTS timescaledb;

-- The guide's columns keep their names, so its queries run unchanged. Differences from the
-- guide's DDL, and why:
--  * estimated_cost is NUMERIC(20,10), not DECIMAL(10,6): a cheap model's cost per call is often
--    below a micro-dollar and would round to 0 at scale 6.
--  * created_at is TIMESTAMPTZ: events carry an offset, and the hypertable partitions on it.
--  * the primary key is (created_at, id): a hypertable's unique keys must include its time
--    column; duplicates are defined on (id, created_at) anyway.
--  * provider, model and the token counts are NOT NULL: the gateway rejects events without them.
-- TimescaleDB warns that VARCHAR "does not follow best practices"; the lengths are kept because
-- they are the guide's and the gateway validates the same limits.
CREATE TABLE IF NOT EXISTS gateway_mode_audit (
    id                   UUID           NOT NULL,
    tenant_id            VARCHAR(255)   NOT NULL,
    user_id              VARCHAR(255),
    provider             VARCHAR(100)   NOT NULL,
    model                VARCHAR(100)   NOT NULL,
    prompt_tokens        INTEGER        NOT NULL,
    completion_tokens    INTEGER        NOT NULL,
    total_tokens         INTEGER        NOT NULL,
    estimated_cost       NUMERIC(20,10) NOT NULL,
    created_at           TIMESTAMPTZ    NOT NULL,
    cached_prompt_tokens INTEGER        NOT NULL DEFAULT 0,
    cache_write_tokens   INTEGER        NOT NULL DEFAULT 0,
    reasoning_tokens     INTEGER        NOT NULL DEFAULT 0,
    -- provided: the caller sent estimated_cost; priced: from the price book; unpriced: no price
    -- known, stored with cost 0 so that free-looking usage stays visible.
    pricing_status       TEXT           NOT NULL
        CHECK (pricing_status IN ('provided', 'priced', 'unpriced')),
    labels               JSONB          NOT NULL DEFAULT '{}',
    request_id           TEXT,
    received_at          TIMESTAMPTZ    NOT NULL,
    ingested_at          TIMESTAMPTZ    NOT NULL DEFAULT now(),
    -- where the row came from: lets an operator trace a row back to its Kafka record and prove
    -- that a replay wrote the same payload.
    payload_sha256       BYTEA          NOT NULL,
    source_partition     INTEGER        NOT NULL,
    source_offset        BIGINT         NOT NULL,
    PRIMARY KEY (created_at, id)
);

-- 1-day chunks: a day of one busy deployment is a comfortable chunk size, and compression and
-- retention then work in whole days. No default created_at index: the primary key
-- (created_at, id) already serves time-range scans in both directions.
SELECT create_hypertable(
    'gateway_mode_audit',
    by_range('created_at', INTERVAL '1 day'),
    create_default_indexes => FALSE,
    if_not_exists => TRUE
);

-- Tenant reports and budget checks filter by tenant and time; model reports by provider/model.
CREATE INDEX IF NOT EXISTS gateway_mode_audit_tenant_created_idx
    ON gateway_mode_audit (tenant_id, created_at DESC);
CREATE INDEX IF NOT EXISTS gateway_mode_audit_provider_model_created_idx
    ON gateway_mode_audit (provider, model, created_at DESC);

-- The processor's source of truth for where to resume: written in the same transaction as the
-- rows, so rows and offsets can never disagree. Kafka's own commits are only for lag monitoring.
CREATE TABLE IF NOT EXISTS ingest_offsets (
    consumer_group TEXT        NOT NULL,
    topic          TEXT        NOT NULL,
    partition      INTEGER     NOT NULL,
    next_offset    BIGINT      NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
