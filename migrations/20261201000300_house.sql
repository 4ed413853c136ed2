-- The house issue: one statement shape for the queue's state counts, and one
-- spelling of order statuses, checked by the schema.

-- Every statement that moves jobs between states (claim, ack, rescue, hand-back,
-- operators' retry and cancel, prune) counts the moves here, in the same statement:
-- one row per move, `was` NULL for a job that appears, `now` NULL for one that goes.
-- Returns the number of moves. Callers call it in a CTE that their final SELECT
-- references in a one-time filter, `WHERE (SELECT moved FROM counted) >= 0` (a SELECT
-- in a CTE nobody references would not run). Not a join: the acker's connection
-- disables nested loops, and a cross join penalised so made acks 30 times slower.
CREATE FUNCTION fleet.count_moves(job_names text[], was fleet.job_state[], now fleet.job_state[])
RETURNS bigint
-- PL/pgSQL, not SQL: it keeps its statement's plan for the session, where a SQL
-- function would plan it on every call (claim and ack call it once per batch). No
-- SET clause (each call would save and restore the setting): it is not a definer
-- function, and it names its one table in full.
LANGUAGE plpgsql
AS $$
BEGIN
    -- Two passes over the arrays rather than a lateral join: the acker's connection
    -- disables nested loops, and a lateral join is one.
    INSERT INTO fleet.stat_deltas (metric, job_name, label, delta)
    SELECT 'jobs', d.job_name, d.label, sum(d.d)
    FROM (
        SELECT m.job_name, m.was::text AS label, -1 AS d
        FROM unnest(job_names, was, now) AS m(job_name, was, now)
        WHERE m.was IS NOT NULL AND m.was IS DISTINCT FROM m.now
        UNION ALL
        SELECT m.job_name, m.now::text, 1
        FROM unnest(job_names, was, now) AS m(job_name, was, now)
        WHERE m.now IS NOT NULL AND m.was IS DISTINCT FROM m.now
    ) d
    GROUP BY d.job_name, d.label;
    RETURN coalesce(cardinality(job_names), 0);
END
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
-- PL/pgSQL keeps the statement's plan for the session (a SQL function would plan it
-- on every call, and the OMS calls this on every planning batch).
LANGUAGE plpgsql
SET search_path = public, pg_catalog, pg_temp
AS $$
BEGIN
    RETURN QUERY
    WITH taken AS (
        INSERT INTO venue_request_budgets AS b (tenant_id, account_id, window_start, used)
        SELECT tenant, w.a, date_trunc('minute', now()), w.n FROM unnest(accounts, counts) AS w(a, n)
        ON CONFLICT (tenant_id, account_id) DO UPDATE SET
            used = CASE WHEN b.window_start = date_trunc('minute', now()) THEN b.used + excluded.used
                        ELSE excluded.used END,
            window_start = date_trunc('minute', now())
        RETURNING b.used
    )
    SELECT taken.used FROM taken;
END
$$;

-- Times in force, one spelling (`TimeInForce`); each venue client writes its own.
ALTER TABLE orders ADD CONSTRAINT orders_time_in_force_known
    CHECK (time_in_force IN ('day', 'gtc', 'ioc', 'fok', 'opg', 'cls'));
