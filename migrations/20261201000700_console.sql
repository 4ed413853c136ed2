-- The operators' console: what it reads without scanning the job table, and the
-- record of what operators did.

-- Throughput over time. A delta now carries when it was written (within a flush of
-- the change it counts), and the roll-up files the finishing moves it folds by
-- minute: the overview's sparkline reads an hour of these (a few rows per job type),
-- never the job table.
ALTER TABLE fleet.stat_deltas ADD COLUMN at timestamptz NOT NULL DEFAULT now();

CREATE TABLE fleet.throughput (
    job_name  text NOT NULL,
    minute    timestamptz NOT NULL,
    completed double precision NOT NULL DEFAULT 0,
    dead      double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (job_name, minute)
);

-- Files the finishing moves among deltas taken away (by a roll-up or a recount) by
-- minute, and drops minutes older than a day. Returns how many deltas it was given
-- (callers reference it in a one-time filter, as with fleet.count_moves).
CREATE FUNCTION fleet.file_throughput(job_names text[], labels text[], deltas float8[], ats timestamptz[])
RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fleet.throughput AS t (job_name, minute, completed, dead)
    SELECT d.job_name, date_trunc('minute', d.at),
           coalesce(sum(d.delta) FILTER (WHERE d.label = 'completed'), 0),
           coalesce(sum(d.delta) FILTER (WHERE d.label = 'dead'), 0)
    FROM unnest(job_names, labels, deltas, ats) AS d(job_name, label, delta, at)
    -- Only arrivals: a prune's or a retry's departure (negative) is not throughput.
    WHERE d.label IN ('completed', 'dead') AND d.delta > 0
    GROUP BY 1, 2
    ON CONFLICT (job_name, minute) DO UPDATE
        SET completed = t.completed + excluded.completed, dead = t.dead + excluded.dead;
    DELETE FROM fleet.throughput WHERE minute < now() - interval '1 day';
    RETURN coalesce(cardinality(job_names), 0);
END $$;

CREATE OR REPLACE FUNCTION fleet.roll_up_stats() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    folded bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('fleet'), hashtext('roll_up_stats')) THEN
        RETURN 0;
    END IF;
    WITH gone AS (
        DELETE FROM fleet.stat_deltas RETURNING metric, job_name, label, delta, at
    ), summed AS (
        SELECT metric, job_name, label, sum(delta) AS delta, count(*) AS n
        FROM gone GROUP BY metric, job_name, label
    ), upserted AS (
        INSERT INTO fleet.stats AS s (metric, job_name, label, value)
        SELECT metric, job_name, label, delta FROM summed
        ON CONFLICT (metric, job_name, label) DO UPDATE SET value = s.value + excluded.value
    ), filed AS (
        SELECT fleet.file_throughput(array_agg(job_name), array_agg(label), array_agg(delta), array_agg(at)) AS n
        FROM gone WHERE metric = 'jobs'
    )
    SELECT coalesce(sum(n), 0) INTO folded FROM summed WHERE (SELECT n FROM filed) >= 0;
    RETURN folded;
END $$;

CREATE OR REPLACE FUNCTION fleet.recount_jobs() RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    filed bigint;
BEGIN
    IF current_setting('transaction_isolation') NOT IN ('repeatable read', 'serializable') THEN
        RAISE EXCEPTION 'fleet.recount_jobs() needs a REPEATABLE READ transaction';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('fleet'), hashtext('roll_up_stats'));
    -- The counts are recomputed; the throughput those deltas carried is kept.
    WITH gone AS (
        DELETE FROM fleet.stat_deltas WHERE metric = 'jobs' RETURNING job_name, label, delta, at
    )
    SELECT fleet.file_throughput(array_agg(job_name), array_agg(label), array_agg(delta), array_agg(at))
    INTO filed FROM gone;
    DELETE FROM fleet.stats WHERE metric = 'jobs';
    INSERT INTO fleet.stats (metric, job_name, label, value)
    SELECT 'jobs', job_name, state::text, count(*) FROM fleet.jobs GROUP BY job_name, state;
END $$;

-- Indexes the console's job filters use (a page of 1,000,000 jobs reads a page's
-- worth of index, whatever the filter):
-- by job type and state, newest first (the list asks once per job type and state and
-- merges). Not for running jobs: a claim then writes no entry here (running jobs are
-- few, and listed through jobs_leased).
CREATE INDEX jobs_browse ON fleet.jobs (job_name, state, id) WHERE state <> 'running';
-- by tenant, for the job types whose payload names one.
CREATE INDEX jobs_tenant ON fleet.jobs ((payload ->> 'tenant_id'), id)
    WHERE payload ? 'tenant_id';

-- Every operator's action on the queue (console or CLI), written in the transaction
-- that makes it: who (the credential's fingerprint, never the credential), what,
-- which jobs or queue, how many changed.
CREATE TABLE fleet.operator_actions (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,
    action   text NOT NULL CHECK (action IN ('retry', 'cancel', 'pause', 'resume')),
    target   jsonb NOT NULL,
    affected bigint NOT NULL
);

-- The first job id created at or after `since`: a binary search of the primary key
-- (a few dozen probes), so that the console's age filters are id ranges, which every
-- index of the job table ends with. Ids follow creation closely (they are drawn at
-- insert, created_at is the transaction's start), so a job is placed off by at most
-- the length of the transaction that enqueued it.
CREATE FUNCTION fleet.first_job_id_since(since timestamptz) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    lo bigint;
    hi bigint;
    mid bigint;
    probe_id bigint;
    probe_at timestamptz;
BEGIN
    SELECT min(id), max(id) + 1 INTO lo, hi FROM fleet.jobs;
    IF lo IS NULL THEN
        RETURN 1;
    END IF;
    WHILE lo < hi LOOP
        mid := lo + (hi - lo) / 2;
        SELECT id, created_at INTO probe_id, probe_at
        FROM fleet.jobs WHERE id >= mid ORDER BY id LIMIT 1;
        IF probe_at >= since THEN
            hi := mid;
        ELSE
            lo := probe_id + 1;
        END IF;
    END LOOP;
    RETURN lo;
END $$;
