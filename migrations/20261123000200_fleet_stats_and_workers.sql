-- Bookkeeping next to the job table, so that health and metrics never scan it.

-- Live worker processes. A worker's identity is a fresh uuid per boot; its jobs are
-- rescued when its heartbeat is older than the lease timeout.
CREATE TABLE fleet.workers (
    id                uuid PRIMARY KEY,
    name              text NOT NULL,
    host              text NOT NULL,
    pid               integer NOT NULL,
    queues            text[] NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at        timestamptz
);

-- Metrics as deltas: every writer appends (no row is contended), a roll-up folds them
-- into fleet.stats. metric examples: jobs{state}, dedupe_hits, rescued, wait_seconds_bucket{le}.
CREATE TABLE fleet.stat_deltas (
    metric   text NOT NULL,
    job_name text NOT NULL,
    label    text NOT NULL DEFAULT '',
    delta    double precision NOT NULL
);

CREATE TABLE fleet.stats (
    metric   text NOT NULL,
    job_name text NOT NULL,
    label    text NOT NULL DEFAULT '',
    value    double precision NOT NULL,
    PRIMARY KEY (metric, job_name, label)
);

-- Folds the pending deltas into fleet.stats. One roll-up at a time.
CREATE FUNCTION fleet.roll_up_stats() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    folded bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('fleet'), hashtext('roll_up_stats')) THEN
        RETURN 0;
    END IF;
    WITH gone AS (
        DELETE FROM fleet.stat_deltas RETURNING metric, job_name, label, delta
    ), summed AS (
        SELECT metric, job_name, label, sum(delta) AS delta, count(*) AS n
        FROM gone GROUP BY metric, job_name, label
    ), upserted AS (
        INSERT INTO fleet.stats AS s (metric, job_name, label, value)
        SELECT metric, job_name, label, delta FROM summed
        ON CONFLICT (metric, job_name, label) DO UPDATE SET value = s.value + excluded.value
    )
    SELECT coalesce(sum(n), 0) INTO folded FROM summed;
    RETURN folded;
END $$;

-- Exact job counts by (job_name, state), recomputed from the table itself: the prune
-- job runs this, so drift (rows edited by hand) heals. It must run in one snapshot
-- (REPEATABLE READ): a delta is visible to it exactly when its job change is, so the
-- deltas it deletes are exactly those its count already includes.
CREATE FUNCTION fleet.recount_jobs() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('transaction_isolation') NOT IN ('repeatable read', 'serializable') THEN
        RAISE EXCEPTION 'fleet.recount_jobs() needs a REPEATABLE READ transaction';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('fleet'), hashtext('roll_up_stats'));
    DELETE FROM fleet.stat_deltas WHERE metric = 'jobs';
    DELETE FROM fleet.stats WHERE metric = 'jobs';
    INSERT INTO fleet.stats (metric, job_name, label, value)
    SELECT 'jobs', job_name, state::text, count(*) FROM fleet.jobs GROUP BY job_name, state;
END $$;

-- Last tick enqueued by each cron schedule (health shows it).
CREATE TABLE fleet.schedules (
    name           text PRIMARY KEY,
    cron           text NOT NULL,
    job_name       text NOT NULL,
    last_tick_at   timestamptz,
    last_job_id    bigint,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Paused queues are not claimed from.
CREATE TABLE fleet.paused_queues (
    job_name  text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT now()
);
