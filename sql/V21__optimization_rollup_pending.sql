-- V21__optimization_rollup_pending.sql: the optimization rollup's (V14) deltas, one row per
-- batch, waiting to be added to usage_optimize_daily and usage_optimize_histogram.
--
-- Upserting ~1,400 daily and ~13,500 histogram rows was most of a batch transaction's time. The
-- batch transaction now computes exactly what it used to add (summed per target row, use cases
-- folded against usage_attribution_daily as before) and inserts it here as ONE row of arrays;
-- the processor's applier (processor/src/stream/optimize_apply.rs) reads many of these rows at
-- a time, sums them per target row, upserts the sums and deletes the rows it read, all in one
-- transaction (store/src/optimize/pending.rs). A batch's events and its deltas commit together,
-- and a delta leaves this table in the same transaction that adds it to the rollup, so every
-- event is counted exactly once; what is here after a crash is applied by the next applier.
--
-- The arrays hold the daily rows (one element per row: the key columns, then V14's sums), and
-- the histogram rows as `h_key` (1-based position of the row's key in the daily arrays: every
-- histogram row's key has a daily row in the same batch), `h_metric`, `h_bucket`, `h_requests`.
-- The cost columns are NUMERIC(30,10) like V14's, so each batch's sums are rounded exactly as
-- the upsert into V14's columns rounded them. The views usage_optimize_pending_daily and
-- usage_optimize_pending_histogram unnest them into the rollup tables' columns, for the readers
-- that must see every committed batch (the optimization report reads the tables plus these
-- views in one statement).
--
-- Runs inside one transaction; every statement is idempotent.

CREATE TABLE IF NOT EXISTS usage_optimize_pending (
    id                         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at                 TIMESTAMPTZ      NOT NULL DEFAULT now(),
    day                        TIMESTAMPTZ[]    NOT NULL,
    tenant_id                  TEXT[]           NOT NULL,
    provider                   TEXT[]           NOT NULL,
    model                      TEXT[]           NOT NULL,
    use_case                   TEXT[]           NOT NULL,
    requests                   BIGINT[]         NOT NULL,
    prompt_tokens              BIGINT[]         NOT NULL,
    completion_tokens          BIGINT[]         NOT NULL,
    total_tokens               BIGINT[]         NOT NULL,
    cached_prompt_tokens       BIGINT[]         NOT NULL,
    cache_write_tokens         BIGINT[]         NOT NULL,
    reasoning_tokens           BIGINT[]         NOT NULL,
    max_prompt_tokens          BIGINT[]         NOT NULL,
    cost                       NUMERIC(30,10)[] NOT NULL,
    priced_requests            BIGINT[]         NOT NULL,
    priced_tokens              BIGINT[]         NOT NULL,
    listed_requests            BIGINT[]         NOT NULL,
    list_cost                  NUMERIC(30,10)[] NOT NULL,
    input_list_cost            NUMERIC(30,10)[] NOT NULL,
    output_list_cost           NUMERIC(30,10)[] NOT NULL,
    cache_read_list_cost       NUMERIC(30,10)[] NOT NULL,
    cache_read_at_input_cost   NUMERIC(30,10)[] NOT NULL,
    cache_write_list_cost      NUMERIC(30,10)[] NOT NULL,
    cache_write_at_input_cost  NUMERIC(30,10)[] NOT NULL,
    no_cache_requests          BIGINT[]         NOT NULL,
    no_cache_prompt_tokens     BIGINT[]         NOT NULL,
    no_cache_input_list_cost   NUMERIC(30,10)[] NOT NULL,
    h_key                      INTEGER[]        NOT NULL,
    h_metric                   TEXT[]           NOT NULL,
    h_bucket                   INTEGER[]        NOT NULL,
    h_requests                 BIGINT[]         NOT NULL
);

-- Stored out of line uncompressed: a row lives a few seconds, and compressing ~600 KB of arrays
-- in every batch transaction cost more than the bytes it saved.
ALTER TABLE usage_optimize_pending
    ALTER COLUMN day SET STORAGE EXTERNAL,
    ALTER COLUMN tenant_id SET STORAGE EXTERNAL,
    ALTER COLUMN provider SET STORAGE EXTERNAL,
    ALTER COLUMN model SET STORAGE EXTERNAL,
    ALTER COLUMN use_case SET STORAGE EXTERNAL,
    ALTER COLUMN requests SET STORAGE EXTERNAL,
    ALTER COLUMN prompt_tokens SET STORAGE EXTERNAL,
    ALTER COLUMN completion_tokens SET STORAGE EXTERNAL,
    ALTER COLUMN total_tokens SET STORAGE EXTERNAL,
    ALTER COLUMN cached_prompt_tokens SET STORAGE EXTERNAL,
    ALTER COLUMN cache_write_tokens SET STORAGE EXTERNAL,
    ALTER COLUMN reasoning_tokens SET STORAGE EXTERNAL,
    ALTER COLUMN max_prompt_tokens SET STORAGE EXTERNAL,
    ALTER COLUMN cost SET STORAGE EXTERNAL,
    ALTER COLUMN priced_requests SET STORAGE EXTERNAL,
    ALTER COLUMN priced_tokens SET STORAGE EXTERNAL,
    ALTER COLUMN listed_requests SET STORAGE EXTERNAL,
    ALTER COLUMN list_cost SET STORAGE EXTERNAL,
    ALTER COLUMN input_list_cost SET STORAGE EXTERNAL,
    ALTER COLUMN output_list_cost SET STORAGE EXTERNAL,
    ALTER COLUMN cache_read_list_cost SET STORAGE EXTERNAL,
    ALTER COLUMN cache_read_at_input_cost SET STORAGE EXTERNAL,
    ALTER COLUMN cache_write_list_cost SET STORAGE EXTERNAL,
    ALTER COLUMN cache_write_at_input_cost SET STORAGE EXTERNAL,
    ALTER COLUMN no_cache_requests SET STORAGE EXTERNAL,
    ALTER COLUMN no_cache_prompt_tokens SET STORAGE EXTERNAL,
    ALTER COLUMN no_cache_input_list_cost SET STORAGE EXTERNAL,
    ALTER COLUMN h_key SET STORAGE EXTERNAL,
    ALTER COLUMN h_metric SET STORAGE EXTERNAL,
    ALTER COLUMN h_bucket SET STORAGE EXTERNAL,
    ALTER COLUMN h_requests SET STORAGE EXTERNAL;

CREATE OR REPLACE VIEW usage_optimize_pending_daily AS
SELECT p.id AS pending_id, d.*
FROM usage_optimize_pending AS p
CROSS JOIN LATERAL UNNEST(
    p.day, p.tenant_id, p.provider, p.model, p.use_case, p.requests, p.prompt_tokens,
    p.completion_tokens, p.total_tokens, p.cached_prompt_tokens, p.cache_write_tokens,
    p.reasoning_tokens, p.max_prompt_tokens, p.cost, p.priced_requests, p.priced_tokens,
    p.listed_requests, p.list_cost, p.input_list_cost, p.output_list_cost,
    p.cache_read_list_cost, p.cache_read_at_input_cost, p.cache_write_list_cost,
    p.cache_write_at_input_cost, p.no_cache_requests, p.no_cache_prompt_tokens,
    p.no_cache_input_list_cost
) AS d(
    day, tenant_id, provider, model, use_case, requests, prompt_tokens, completion_tokens,
    total_tokens, cached_prompt_tokens, cache_write_tokens, reasoning_tokens, max_prompt_tokens,
    cost, priced_requests, priced_tokens, listed_requests, list_cost, input_list_cost,
    output_list_cost, cache_read_list_cost, cache_read_at_input_cost, cache_write_list_cost,
    cache_write_at_input_cost, no_cache_requests, no_cache_prompt_tokens,
    no_cache_input_list_cost
);

CREATE OR REPLACE VIEW usage_optimize_pending_histogram AS
SELECT p.id AS pending_id, x.*
FROM usage_optimize_pending AS p
CROSS JOIN LATERAL (
    SELECT k.day, k.tenant_id, k.provider, k.model, k.use_case, h.metric, h.bucket, h.requests
    FROM UNNEST(p.day, p.tenant_id, p.provider, p.model, p.use_case) WITH ORDINALITY
        AS k(day, tenant_id, provider, model, use_case, n)
    JOIN UNNEST(p.h_key, p.h_metric, p.h_bucket, p.h_requests) AS h(key, metric, bucket, requests)
        ON h.key = k.n
) AS x;
