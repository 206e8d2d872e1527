-- V16__provider_reports.sql: what the providers' own usage and cost reports said, kept as they
-- said it, so the ledger can be reconciled against the bill (`processor reconcile`).
-- Runs inside one transaction; every statement is idempotent.
--
-- Providers revise their reports for days after the fact. A fetch never overwrites: each day of
-- each report gets a new revision when its content differs from the latest one, and the rows of
-- a revision are never updated or deleted (a trigger refuses it).

-- One row per fetch of one report over a range of days. `completed_at` is set in the same
-- transaction that stores the revisions, after every page arrived; a run that failed half-way
-- keeps `completed_at` NULL, its `error`, and no rows.
CREATE TABLE IF NOT EXISTS provider_fetch_runs (
    run_id       UUID        PRIMARY KEY,
    provider     TEXT        NOT NULL CHECK (provider IN ('openai', 'anthropic')),
    report       TEXT        NOT NULL CHECK (report IN ('usage', 'cost')),
    from_day     DATE        NOT NULL,
    to_day       DATE        NOT NULL,
    -- the request that produced the rows: path and query string of the first page, no key
    query        TEXT        NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at TIMESTAMPTZ,
    pages        INTEGER,
    error        TEXT,
    CHECK (to_day > from_day)
);

-- One revision of one day of one report: what the provider said about that day at `fetched_at`.
-- `content_sha256` is the hash of the day's rows in a canonical order; an equal hash on a later
-- fetch adds no revision.
CREATE TABLE IF NOT EXISTS provider_report_revisions (
    provider       TEXT        NOT NULL,
    report         TEXT        NOT NULL,
    day            DATE        NOT NULL,
    revision       INTEGER     NOT NULL CHECK (revision >= 1),
    run_id         UUID        NOT NULL REFERENCES provider_fetch_runs (run_id),
    fetched_at     TIMESTAMPTZ NOT NULL,
    content_sha256 BYTEA       NOT NULL,
    row_count      INTEGER     NOT NULL,
    PRIMARY KEY (provider, report, day, revision)
);

-- Token counts of one usage-report result, in tokenledger's disjoint kinds. `scope_id` is the
-- OpenAI project or the Anthropic workspace ('' when the provider gave none: the default
-- workspace); `raw` is the result object exactly as received.
CREATE TABLE IF NOT EXISTS provider_usage_rows (
    provider       TEXT    NOT NULL,
    report         TEXT    NOT NULL DEFAULT 'usage' CHECK (report = 'usage'),
    day            DATE    NOT NULL,
    revision       INTEGER NOT NULL,
    ordinal        INTEGER NOT NULL,
    scope_id       TEXT    NOT NULL,
    api_key_id     TEXT,
    model          TEXT    NOT NULL,
    service_tier   TEXT,
    input_uncached BIGINT  NOT NULL,
    cache_read     BIGINT  NOT NULL,
    cache_write_5m BIGINT  NOT NULL,
    cache_write_1h BIGINT  NOT NULL,
    output         BIGINT  NOT NULL,
    requests       BIGINT,
    raw            JSONB   NOT NULL,
    PRIMARY KEY (provider, day, revision, ordinal),
    FOREIGN KEY (provider, report, day, revision)
        REFERENCES provider_report_revisions (provider, report, day, revision)
);

-- One cost-report result in USD (Anthropic's cents converted exactly). `token_kind` is the
-- disjoint kind the line is for when the line says (NULL: a charge that is not per token, or a
-- line item of unknown shape); `model` NULL when the line names none.
CREATE TABLE IF NOT EXISTS provider_cost_rows (
    provider    TEXT           NOT NULL,
    report      TEXT           NOT NULL DEFAULT 'cost' CHECK (report = 'cost'),
    day         DATE           NOT NULL,
    revision    INTEGER        NOT NULL,
    ordinal     INTEGER        NOT NULL,
    scope_id    TEXT           NOT NULL,
    model       TEXT,
    token_kind  TEXT CHECK (token_kind IN
        ('input_uncached', 'cache_read', 'cache_write_5m', 'cache_write_1h', 'output')),
    line_item   TEXT,
    amount_usd  NUMERIC(24,12) NOT NULL,
    raw         JSONB          NOT NULL,
    PRIMARY KEY (provider, day, revision, ordinal),
    FOREIGN KEY (provider, report, day, revision)
        REFERENCES provider_report_revisions (provider, report, day, revision)
);

CREATE OR REPLACE FUNCTION provider_report_is_immutable() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'provider reports are immutable: % on % refused (a revised report is a new revision)',
        TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;

DROP TRIGGER IF EXISTS provider_report_revisions_immutable ON provider_report_revisions;
CREATE TRIGGER provider_report_revisions_immutable
    BEFORE UPDATE OR DELETE ON provider_report_revisions
    FOR EACH ROW EXECUTE FUNCTION provider_report_is_immutable();
DROP TRIGGER IF EXISTS provider_usage_rows_immutable ON provider_usage_rows;
CREATE TRIGGER provider_usage_rows_immutable
    BEFORE UPDATE OR DELETE ON provider_usage_rows
    FOR EACH ROW EXECUTE FUNCTION provider_report_is_immutable();
DROP TRIGGER IF EXISTS provider_cost_rows_immutable ON provider_cost_rows;
CREATE TRIGGER provider_cost_rows_immutable
    BEFORE UPDATE OR DELETE ON provider_cost_rows
    FOR EACH ROW EXECUTE FUNCTION provider_report_is_immutable();
