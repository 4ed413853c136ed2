-- Enqueuers no longer NOTIFY because of each other.
--
-- A NOTIFY takes a database-wide lock from its commit's start to its end (WAL flush
-- included), so NOTIFYing enqueues commit one at a time. Enqueue is meant to NOTIFY
-- only when a fetcher is parked, but it tested the idle lock exclusively: two
-- enqueues in flight at once saw each other's lock as a parked fetcher, and at 1,000
-- jobs/s from 32 connections nearly every enqueue NOTIFYed (measured: 30 of 32
-- producers waiting on that lock, enqueue p99 130 ms, enqueues capped near 750/s).
--
-- Now an enqueue takes the idle locks SHARED (enqueues never conflict) and a fetcher
-- parks by taking one of four slots EXCLUSIVELY (crates/queue/src/idle.rs): a shared
-- try fails only where a fetcher is parked, or is parking and waits for the enqueues
-- in flight (their jobs are visible to the claim it makes once parked). Four slots,
-- so that four fetchers of one queue can park at once. A fetcher that just found
-- work also lingers (claims again every few ms) before it parks, so under a steady
-- load nobody is parked and nobody NOTIFYs.

CREATE OR REPLACE FUNCTION fleet.enqueue(
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
       AND NOT (pg_try_advisory_xact_lock_shared(hashtext('fleet.idle.0'), hashtext(enqueue.job_name))
                AND pg_try_advisory_xact_lock_shared(hashtext('fleet.idle.1'), hashtext(enqueue.job_name))
                AND pg_try_advisory_xact_lock_shared(hashtext('fleet.idle.2'), hashtext(enqueue.job_name))
                AND pg_try_advisory_xact_lock_shared(hashtext('fleet.idle.3'), hashtext(enqueue.job_name))) THEN
        PERFORM pg_notify('fleet_jobs', enqueue.job_name);
    END IF;
    RETURN v_id;
END $$;

CREATE OR REPLACE FUNCTION fleet.enqueue_batch(
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
       AND NOT (pg_try_advisory_xact_lock_shared(hashtext('fleet.idle.0'), hashtext(enqueue_batch.job_name))
                AND pg_try_advisory_xact_lock_shared(hashtext('fleet.idle.1'), hashtext(enqueue_batch.job_name))
                AND pg_try_advisory_xact_lock_shared(hashtext('fleet.idle.2'), hashtext(enqueue_batch.job_name))
                AND pg_try_advisory_xact_lock_shared(hashtext('fleet.idle.3'), hashtext(enqueue_batch.job_name))) THEN
        PERFORM pg_notify('fleet_jobs', enqueue_batch.job_name);
    END IF;
    RETURN v_new;
END $$;
