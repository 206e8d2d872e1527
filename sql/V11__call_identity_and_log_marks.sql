-- One LLM call reported more than once (OpenTelemetry spans of two
-- instrumentations, two traces, an hour boundary between their starts) is
-- stored once. Such events carry `call_identity` and are keyed by tenant and
-- id alone; the audit table's unique key must contain its partitioning
-- column, so that identity lives here, written in the batch's transaction.
-- `created_at` is the stored row's; `payload_sha256` its content hash (time
-- left out), NULL for calls stored before this table existed.
CREATE TABLE IF NOT EXISTS call_identities (
    tenant_id      TEXT        NOT NULL,
    id             UUID        NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    payload_sha256 BYTEA,
    PRIMARY KEY (tenant_id, id)
);
-- Pruning past the backfill window reads by time.
CREATE INDEX IF NOT EXISTS call_identities_created_at ON call_identities (created_at);

-- Calls stored before: OpenTelemetry events with a response id were keyed
-- at the start of their UTC hour under a derived (version 8) id. Within the
-- 35-day backfill window plus a margin, a later report of one of them must
-- find it.
INSERT INTO call_identities (tenant_id, id, created_at, payload_sha256)
SELECT tenant_id, id, min(created_at), NULL
FROM gateway_mode_audit
WHERE created_at >= now() - interval '49 days'
  AND created_at = date_trunc('hour', created_at, 'UTC')
  AND substr(id::text, 15, 1) = '8'
GROUP BY tenant_id, id
ON CONFLICT (tenant_id, id) DO NOTHING;

-- The last record each stored offset passed: its offset and a digest of its
-- key and value. On assignment the processor reads that record back; a log
-- that holds another record there is not the log the offset was stored for
-- (the topic was deleted and recreated), whatever its watermarks say.
ALTER TABLE ingest_offsets ADD COLUMN IF NOT EXISTS last_offset BIGINT;
ALTER TABLE ingest_offsets ADD COLUMN IF NOT EXISTS last_record_sha256 BYTEA;
