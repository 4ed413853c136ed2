-- The heartbeat's rescue: the jobs of workers that died (heartbeat older than the
-- lease timeout, $1 seconds) or stopped, found from the workers table and the
-- jobs_leased index, one probe per such worker; each worker is then marked swept so
-- that it is probed once. A scan of every running job (sql/rescue.sql, which also
-- finds settlements lost in a crash and jobs whose owner's row is gone) visits every
-- version ever leased while an old snapshot holds vacuum back; it runs every few
-- heartbeats instead (crates/queue/src/lease.rs).
WITH dead AS (
    SELECT w.id, w.name
    FROM fleet.workers w
    WHERE w.swept_at IS NULL
      AND (w.stopped_at IS NOT NULL OR w.last_heartbeat_at < now() - make_interval(secs => $1))
), stale AS (
    -- An array of owners, not a join: one index probe per dead worker (none when no
    -- worker died), whatever the estimates.
    SELECT j.id, (SELECT d.name FROM dead d WHERE d.id = j.lease_owner) AS worker
    FROM fleet.jobs j
    WHERE j.lease_owner = ANY (ARRAY(SELECT id FROM dead))
      AND j.state = 'running'
    FOR UPDATE OF j SKIP LOCKED
), rescued AS (
    UPDATE fleet.jobs j
    SET state = CASE WHEN j.attempts >= j.max_attempts THEN 'dead' ELSE 'available' END::fleet.job_state,
        lease_owner = NULL,
        run_at = now(),
        finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
        errors = j.errors || jsonb_build_array(jsonb_build_object(
            'attempt', j.attempts, 'at', now(), 'kind', 'lease_expired',
            'worker', (SELECT s.worker FROM stale s WHERE s.id = j.id),
            'error', 'the worker running this attempt stopped heartbeating; attempt abandoned'))
    -- An array of ids, not a join with `stale`: primary-key lookups, whatever the
    -- estimates (a join planned for many rows scans the whole job table).
    WHERE j.id = ANY (ARRAY(SELECT id FROM stale))
    RETURNING j.id, j.job_name, j.state
), counted AS (
    SELECT fleet.count_moves(array_agg(job_name), array_agg('running'::fleet.job_state),
                             array_agg(state)) AS moved
    FROM rescued
), rescues AS (
    INSERT INTO fleet.stat_deltas (metric, job_name, label, delta)
    SELECT 'rescued', job_name, '', count(*) FROM rescued GROUP BY job_name
), swept AS (
    -- Rows another rescuer or a late ack had locked are theirs to settle. A worker
    -- that heartbeated meanwhile is alive again (the row is re-read before update).
    UPDATE fleet.workers w SET swept_at = now()
    FROM dead d
    WHERE w.id = d.id
      AND (w.stopped_at IS NOT NULL OR w.last_heartbeat_at < now() - make_interval(secs => $1))
)
SELECT id AS "id!", job_name AS "job_name!" FROM rescued WHERE (SELECT moved FROM counted) >= 0
