-- V5__refresh_windows.sql: refresh windows that cover the lateness window plus an outage margin.
--
-- V2's policies reached back 36 days (usage_hourly) and 37 days (the daily rollups): the gateway's
-- 35-day lateness plus one day. An event accepted 35 days late and stored after a processor outage
-- longer than that day fell outside every refresh window; real-time aggregation does not cover it
-- either (it only adds rows after a rollup's watermark), so it was never materialized.
--
-- The windows are now the lateness plus an outage margin, 14 days by default, set by
-- tokenledger_set_refresh_windows(margin), which an operator may call again to choose another
-- margin (`processor refresh --outage-margin-days N` does). A refresh only recomputes the buckets
-- the invalidation log marks as changed, so a longer window costs nothing while no late rows come
-- in. Rows older than any window are materialized with `processor refresh --from DATE --to DATE`.
--
-- Runs inside one transaction; the function is replaced and the policies are removed and added
-- again, so a re-run is a no-op.

CREATE OR REPLACE FUNCTION tokenledger_set_refresh_windows(
    outage_margin INTERVAL,
    lateness      INTERVAL DEFAULT INTERVAL '35 days'
)
RETURNS TABLE (rollup TEXT, start_offset INTERVAL, end_offset INTERVAL, schedule_interval INTERVAL)
LANGUAGE plpgsql AS $$
DECLARE
    -- The daily rollups read usage_hourly: one day more, and they run after it had a chance.
    hourly_start CONSTANT INTERVAL := lateness + outage_margin;
    daily_start  CONSTANT INTERVAL := lateness + outage_margin + INTERVAL '1 day';
    view_name TEXT;
BEGIN
    IF outage_margin < INTERVAL '0' OR lateness < INTERVAL '0' THEN
        RAISE EXCEPTION 'outage_margin and lateness must not be negative (got %, %)',
            outage_margin, lateness;
    END IF;
    PERFORM remove_continuous_aggregate_policy('usage_hourly', if_exists => TRUE);
    PERFORM add_continuous_aggregate_policy('usage_hourly',
        start_offset      => hourly_start,
        end_offset        => INTERVAL '1 hour',
        schedule_interval => INTERVAL '15 minutes');
    FOREACH view_name IN ARRAY ARRAY['usage_daily', 'tenant_daily', 'model_daily'] LOOP
        PERFORM remove_continuous_aggregate_policy(view_name::regclass, if_exists => TRUE);
        PERFORM add_continuous_aggregate_policy(view_name::regclass,
            start_offset      => daily_start,
            end_offset        => INTERVAL '1 day',
            schedule_interval => INTERVAL '1 hour');
    END LOOP;
    RETURN QUERY VALUES
        ('usage_hourly', hourly_start, INTERVAL '1 hour', INTERVAL '15 minutes'),
        ('usage_daily', daily_start, INTERVAL '1 day', INTERVAL '1 hour'),
        ('tenant_daily', daily_start, INTERVAL '1 day', INTERVAL '1 hour'),
        ('model_daily', daily_start, INTERVAL '1 day', INTERVAL '1 hour');
END
$$;

SELECT * FROM tokenledger_set_refresh_windows(INTERVAL '14 days');
