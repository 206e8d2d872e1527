-- V22__attribution_rollup_fillfactor.sql: half-empty pages for the attribution rollup (V9), as
-- V20 gave the optimization rollup: the batch transaction's bounded upsert updates most of its
-- target rows in place once a day's rows exist (on the benchmark's catch-up ~1,000 rows per
-- batch of 5,000 events), and with room on the page the new row version is a heap-only update
-- that writes no entry into either index. TimescaleDB applies the setting to existing chunks
-- and copies it to new ones; pages already full keep their rows until they are rewritten.
--
-- Runs inside one transaction; every statement is idempotent.

ALTER TABLE usage_attribution_daily SET (fillfactor = 50);
