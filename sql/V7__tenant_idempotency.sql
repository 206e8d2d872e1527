-- V7__tenant_idempotency.sql: idempotency keys are per tenant. The audit table's key becomes
-- (created_at, tenant_id, id) instead of the primary key (created_at, id) of V1.
--
-- Why: event ids are chosen by clients, so they are unique per tenant at best. Under V1's key a
-- tenant that sends another tenant's (id, created_at) first, by chance or on purpose, owns that
-- key: the other tenant's own event is then refused as a conflict and missing from its spend
-- and rollups. Under the new key the two are two events; within one tenant the key still
-- identifies one event (a retry is a duplicate, other content a conflict).
--
-- How, and what it locks. Runs inside one transaction, like the other files.
--  1. The new unique index is built first, while V1's primary key still guards every insert.
--     Building it takes a SHARE lock on the hypertable and its chunks: queries keep running,
--     inserts wait for the build. Nothing is refused meanwhile: the gateway keeps accepting into
--     Kafka and the processor's batch waits or retries, then catches up. Measured on 1M rows,
--     see sql/README.md. TimescaleDB refuses timescaledb.transaction_per_chunk (one short lock
--     per chunk) for unique indexes, and hypertables do not support CREATE INDEX CONCURRENTLY.
--  2. V1's primary key is dropped: an ACCESS EXCLUSIVE lock, for as long as dropping an index
--     takes (milliseconds). The new index cannot be turned into a PRIMARY KEY constraint
--     without building it again under that lock (hypertables refuse ADD CONSTRAINT ... USING
--     INDEX), so the key stays a unique index. Its columns are NOT NULL, so it is a primary key
--     in everything but the name: it is the ON CONFLICT arbiter of the processor's insert, and
--     serves time-range scans as the primary key did (V1 creates no default time index).
-- lock_timeout bounds how long the migration queues behind others (and others behind it): if a
-- long query holds the table, the migration fails with SQLSTATE 55P03 and rolls back instead
-- of stalling every reader behind its lock request; run `processor migrate` again.
--
-- Compressed chunks (V2 compresses chunks older than 7 days): the index is created on every
-- chunk; for a compressed chunk it covers the rows not yet compressed, and TimescaleDB checks
-- compressed rows at insert time by decompressing the batches the key could match, as it did
-- for V1's key (tenant_id is the segment-by column, created_at and id the order-by columns, so
-- a check reads only the tenant's segment). No existing row can violate the new key: it is V1's
-- key plus a column. Verified on TimescaleDB 2.23 with compressed chunks; a TimescaleDB that
-- refuses unique indexes on compressed chunks needs them decompressed first (sql/README.md).
--
-- Idempotent: IF NOT EXISTS and IF EXISTS make a re-run a no-op.
--
-- Deploy order: migrate first, then roll out processors that insert with this key; processors
-- refuse to run on a database that lacks this migration.

SET LOCAL lock_timeout = '10s';

CREATE UNIQUE INDEX IF NOT EXISTS gateway_mode_audit_idempotency_key
    ON gateway_mode_audit (created_at, tenant_id, id);

ALTER TABLE gateway_mode_audit DROP CONSTRAINT IF EXISTS gateway_mode_audit_pkey;
