-- Give back the jobs no live worker holds:
-- - those of dead workers: whose heartbeat is older than the lease timeout ($1
--   seconds), that stopped, or that no longer exist (a registration lost in a crash);
-- - those a live worker no longer reports in its heartbeat's `held` list although it
--   claimed them more than $1 seconds before that heartbeat: the worker settled them,
--   but the settlement was lost (the queue commits asynchronously, so a server crash
--   can lose an ack), and nobody would ever touch them again.
-- The abandoned attempt counts (a job that kills its worker must end up dead, not
-- loop forever). Any process may run this; SKIP LOCKED keeps two rescuers off the
-- same rows.
WITH stale AS (
    SELECT j.id,
           CASE WHEN w.id IS NULL OR w.stopped_at IS NOT NULL
                     OR w.last_heartbeat_at < now() - make_interval(secs => $1)
                THEN 'lease_expired' ELSE 'lease_lost' END AS kind,
           w.name AS worker
    FROM fleet.jobs j
    LEFT JOIN fleet.workers w ON w.id = j.lease_owner
    WHERE j.lease_owner IS NOT NULL
      AND j.state = 'running'
      AND (w.id IS NULL
           OR w.stopped_at IS NOT NULL
           OR w.last_heartbeat_at < now() - make_interval(secs => $1)
           OR (j.started_at < w.last_heartbeat_at - make_interval(secs => $1)
               AND NOT (j.id = ANY (w.held))))
    FOR UPDATE OF j SKIP LOCKED
), rescued AS (
    UPDATE fleet.jobs j
    SET state = CASE WHEN j.attempts >= j.max_attempts THEN 'dead' ELSE 'available' END::fleet.job_state,
        lease_owner = NULL,
        run_at = now(),
        finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempts, 'at', now(), 'kind', s.kind, 'worker', s.worker,
            'error', CASE s.kind
                WHEN 'lease_expired' THEN 'the worker running this attempt stopped heartbeating; attempt abandoned'
                ELSE 'the worker no longer holds this attempt (its settlement was lost); attempt abandoned'
            END))
    FROM stale s
    -- An array of ids as well as the join: primary-key lookups, whatever the
    -- estimates (a join planned for many rows scans the whole job table).
    WHERE j.id = ANY (ARRAY(SELECT id FROM stale)) AND j.id = s.id
    RETURNING j.id, j.job_name, j.state
), counted AS (
    SELECT fleet.count_moves(array_agg(job_name), array_agg('running'::fleet.job_state),
                             array_agg(state)) AS moved
    FROM rescued
), rescues AS (
    INSERT INTO fleet.stat_deltas (metric, job_name, label, delta)
    SELECT 'rescued', job_name, '', count(*) FROM rescued GROUP BY job_name
)
SELECT id AS "id!", job_name AS "job_name!" FROM rescued WHERE (SELECT moved FROM counted) >= 0
