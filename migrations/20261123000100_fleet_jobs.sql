-- The job table: the one queue of the fleet. Every job type (`job_name`) is its own
-- queue for claiming and concurrency. Rows are written only through the fleet.*
-- functions (enqueue) and the runtime's claim/ack statements, never by hand.
CREATE SCHEMA IF NOT EXISTS fleet;

-- available: waiting for run_at (retries wait here too, with run_at in the future)
-- running:   claimed under a lease (lease_owner = a live worker, lease_token = fencing token)
-- completed: done; kept until retention prunes it, so its idempotency key keeps deduping
-- dead:      permanent failure or attempts exhausted; keeps every attempt's error
-- cancelled: stopped by an operator
CREATE TYPE fleet.job_state AS ENUM ('available', 'running', 'completed', 'dead', 'cancelled');

CREATE TABLE fleet.jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_name         text NOT NULL,
    payload          jsonb NOT NULL,
    idempotency_key  text,
    concurrency_key  text,
    state            fleet.job_state NOT NULL DEFAULT 'available',
    priority         smallint NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 25 CHECK (max_attempts > 0),
    -- Incremented on every claim and never decremented: an attempt's completion is
    -- accepted only while the row still carries the token it was claimed with.
    lease_token      integer NOT NULL DEFAULT 0,
    lease_owner      uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    -- One object per failed attempt: {attempt, at, kind, error}.
    errors           jsonb NOT NULL DEFAULT '[]'
);

-- Dedupe: one job per (job_name, key) while the row exists, whatever its state.
CREATE UNIQUE INDEX jobs_idempotency_key ON fleet.jobs (job_name, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Claim order, only over what can be claimed.
CREATE INDEX jobs_claim ON fleet.jobs (job_name, priority DESC, run_at, id)
    WHERE state = 'available';
-- Rescue of dead workers' leases. Keyed on lease_owner, not on state = 'running':
-- a partial index on that state invites the planner to drive the ack's join from
-- it whenever statistics say few jobs run (right after an idle ANALYZE), which
-- makes a batched ack O(batch x running).
CREATE INDEX jobs_leased ON fleet.jobs (lease_owner) WHERE lease_owner IS NOT NULL;
-- The per-key serialisation guard.
CREATE UNIQUE INDEX jobs_one_running_per_concurrency_key ON fleet.jobs (concurrency_key)
    WHERE state = 'running' AND concurrency_key IS NOT NULL;
-- Retention and the operator's views of finished jobs.
CREATE INDEX jobs_finished ON fleet.jobs (state, finished_at)
    WHERE state IN ('completed', 'dead', 'cancelled');

-- A queue table churns: vacuum it early and often rather than let dead tuples pile
-- up in front of the claim index.
ALTER TABLE fleet.jobs SET (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_analyze_scale_factor = 0.0,
    autovacuum_analyze_threshold = 20000,
    fillfactor = 90
);
