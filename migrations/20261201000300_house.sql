-- The house issue: one statement shape for the queue's state counts, and one
-- spelling of order statuses, checked by the schema.

-- Every statement that moves jobs between states (claim, ack, rescue, hand-back,
-- operators' retry and cancel, prune) counts the moves here, in the same statement:
-- one row per move, `was` NULL for a job that appears, `now` NULL for one that goes.
-- Returns the number of moves: callers call it from a CTE their final SELECT
-- references (a SELECT in a CTE nobody references would not run).
CREATE FUNCTION fleet.count_moves(job_names text[], was fleet.job_state[], now fleet.job_state[])
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    WITH moves AS (
        SELECT * FROM unnest(job_names, was, now) AS m(job_name, was, now)
        WHERE m.was IS DISTINCT FROM m.now
    ), deltas AS (
        SELECT job_name, was::text AS label, -1 AS d FROM moves WHERE was IS NOT NULL
        UNION ALL
        SELECT job_name, now::text, 1 FROM moves WHERE now IS NOT NULL
    ), written AS (
        INSERT INTO fleet.stat_deltas (metric, job_name, label, delta)
        SELECT 'jobs', job_name, label, sum(d) FROM deltas GROUP BY job_name, label
    )
    SELECT count(*) FROM moves
$$;

-- Order statuses: ours (pending_submit, sent, submit_unknown) and the venue-neutral
-- lifecycle every venue's answer maps to (the Alpaca client maps Alpaca's spellings:
-- new/pending_new/... -> accepted, canceled -> cancelled, done_for_day -> expired).
UPDATE orders SET status = CASE
    WHEN status = 'canceled' OR status = 'replaced' THEN 'cancelled'
    WHEN status = 'done_for_day' THEN 'expired'
    WHEN status IN ('pending_submit', 'sent', 'submit_unknown', 'accepted', 'partially_filled',
                    'filled', 'cancelled', 'expired', 'rejected') THEN status
    ELSE 'accepted'
END;
ALTER TABLE orders ADD CONSTRAINT orders_status_known CHECK (status IN (
    'pending_submit', 'sent', 'submit_unknown', 'accepted', 'partially_filled', 'filled',
    'cancelled', 'expired', 'rejected'));

-- A venue request budget, taken in one statement for several accounts (the OMS takes
-- it when planning intents and before looking orders up): `counts[i]` requests of
-- `accounts[i]` in this minute's window. Returns each account's use of the window
-- after the take. Runs as its caller (tenant-isolated by row-level security).
CREATE FUNCTION take_venue_budget(tenant uuid, accounts uuid[], counts integer[])
RETURNS SETOF integer
LANGUAGE sql
SET search_path = public, pg_catalog, pg_temp
AS $$
    INSERT INTO venue_request_budgets AS b (tenant_id, account_id, window_start, used)
    SELECT tenant, a, date_trunc('minute', now()), n FROM unnest(accounts, counts) AS w(a, n)
    ON CONFLICT (tenant_id, account_id) DO UPDATE SET
        used = CASE WHEN b.window_start = date_trunc('minute', now()) THEN b.used + excluded.used
                    ELSE excluded.used END,
        window_start = date_trunc('minute', now())
    RETURNING used
$$;
