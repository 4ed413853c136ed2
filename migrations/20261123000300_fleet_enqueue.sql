-- The one way in. Triggers, the scheduler and Rust all call these, inside the
-- caller's transaction: the job exists exactly when the business write commits.

-- Job types the running code knows, with their defaults. `pulse-fleet migrate`
-- writes it from the Rust registry; enqueue refuses a name it does not know, so a
-- typo in a trigger fails the write loudly instead of queueing a job no one runs.
CREATE TABLE fleet.job_types (
    job_name     text PRIMARY KEY,
    max_attempts integer NOT NULL CHECK (max_attempts > 0),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Waking idle workers. A NOTIFY serialises commits (a global lock at commit), so
-- enqueue sends one only when a worker may be parked: idle workers hold the advisory
-- lock (hashtext('fleet.idle'), hashtext(queue)) in shared mode while they wait. If
-- the enqueuing transaction can take it exclusively, nobody is parked, and holding it
-- until commit makes any worker about to park wait for the commit and claim again, so
-- the new job cannot be missed. If it cannot (a worker is parked, or another enqueue
-- is in flight), it NOTIFYs. Either way, fetchers also poll. (src/queue/fetcher.rs
-- holds the other side.)

-- Enqueue one job. A duplicate idempotency key is a silent no-op that returns the
-- existing job's id (its row is kept while it exists, completed jobs included, until
-- retention prunes it). A due job wakes idle workers (see above).
CREATE FUNCTION fleet.enqueue(
    job_name        text,
    payload         jsonb,
    idempotency_key text DEFAULT NULL,
    run_at          timestamptz DEFAULT NULL,
    priority        integer DEFAULT 0,
    max_attempts    integer DEFAULT NULL,
    concurrency_key text DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_id bigint;
    v_max integer := enqueue.max_attempts;
BEGIN
    IF v_max IS NULL THEN
        SELECT t.max_attempts INTO v_max FROM fleet.job_types t WHERE t.job_name = enqueue.job_name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'fleet.enqueue: unknown job type "%"', enqueue.job_name
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'job types come from the Rust registry; run `pulse-fleet migrate`';
        END IF;
    END IF;
    INSERT INTO fleet.jobs (job_name, payload, idempotency_key, run_at, priority, max_attempts, concurrency_key)
    VALUES (enqueue.job_name, enqueue.payload, enqueue.idempotency_key, coalesce(enqueue.run_at, now()),
            enqueue.priority, v_max, enqueue.concurrency_key)
    ON CONFLICT (job_name, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT j.id INTO v_id FROM fleet.jobs j
        WHERE j.job_name = enqueue.job_name AND j.idempotency_key = enqueue.idempotency_key;
        INSERT INTO fleet.stat_deltas (metric, job_name, delta) VALUES ('dedupe_hits', enqueue.job_name, 1);
        RETURN v_id;
    END IF;
    INSERT INTO fleet.stat_deltas (metric, job_name, label, delta) VALUES ('jobs', enqueue.job_name, 'available', 1);
    IF (enqueue.run_at IS NULL OR enqueue.run_at <= now())
       AND NOT pg_try_advisory_xact_lock(hashtext('fleet.idle'), hashtext(enqueue.job_name)) THEN
        PERFORM pg_notify('fleet_jobs', enqueue.job_name);
    END IF;
    RETURN v_id;
END $$;

-- Enqueue many jobs of one type in one statement: what a statement-level trigger
-- with a transition table calls, e.g.
--   PERFORM fleet.enqueue_batch('sync_order', array_agg(jsonb_build_object('order_id', id)),
--                               array_agg('order:' || id)) FROM new_rows;
-- Keys may be NULL (no dedupe) or an array as long as payloads. Returns how many
-- jobs were created; duplicates are skipped and counted as dedupe hits.
CREATE FUNCTION fleet.enqueue_batch(
    job_name         text,
    payloads         jsonb[],
    idempotency_keys text[] DEFAULT NULL,
    run_at           timestamptz DEFAULT NULL,
    priority         integer DEFAULT 0,
    max_attempts     integer DEFAULT NULL
) RETURNS integer LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_max integer := enqueue_batch.max_attempts;
    v_new integer;
    v_total integer := coalesce(cardinality(enqueue_batch.payloads), 0);
BEGIN
    IF v_total = 0 THEN
        RETURN 0;
    END IF;
    IF enqueue_batch.idempotency_keys IS NOT NULL
       AND cardinality(enqueue_batch.idempotency_keys) <> v_total THEN
        RAISE EXCEPTION 'fleet.enqueue_batch: % payloads but % idempotency keys',
            v_total, cardinality(enqueue_batch.idempotency_keys) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_max IS NULL THEN
        SELECT t.max_attempts INTO v_max FROM fleet.job_types t WHERE t.job_name = enqueue_batch.job_name;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'fleet.enqueue_batch: unknown job type "%"', enqueue_batch.job_name
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    INSERT INTO fleet.jobs (job_name, payload, idempotency_key, run_at, priority, max_attempts)
    SELECT enqueue_batch.job_name, p.payload, p.idempotency_key, coalesce(enqueue_batch.run_at, now()),
           enqueue_batch.priority, v_max
    FROM unnest(enqueue_batch.payloads, enqueue_batch.idempotency_keys) AS p(payload, idempotency_key)
    ON CONFLICT (job_name, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING;
    GET DIAGNOSTICS v_new = ROW_COUNT;
    INSERT INTO fleet.stat_deltas (metric, job_name, label, delta)
    SELECT 'jobs', enqueue_batch.job_name, 'available', v_new WHERE v_new > 0
    UNION ALL
    SELECT 'dedupe_hits', enqueue_batch.job_name, '', v_total - v_new WHERE v_total > v_new;
    IF v_new > 0 AND (enqueue_batch.run_at IS NULL OR enqueue_batch.run_at <= now())
       AND NOT pg_try_advisory_xact_lock(hashtext('fleet.idle'), hashtext(enqueue_batch.job_name)) THEN
        PERFORM pg_notify('fleet_jobs', enqueue_batch.job_name);
    END IF;
    RETURN v_new;
END $$;
