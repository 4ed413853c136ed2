-- Settle a batch of attempts in one statement. Each row carries the fencing token it
-- was claimed with; a row whose job was rescued (state no longer running) or
-- re-claimed (token moved on) is not touched and not returned: its ack is refused.
-- The same statement serves completion, retry, death, snooze and hand-back:
--   $3 new state, $4 new run_at (NULL keeps it), $5 attempts to refund (snooze and
--   hand-back do not consume one), $6 the attempt's error object or NULL.
WITH acks AS (
    SELECT *
    FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::timestamptz[], $5::int[], $6::jsonb[])
         AS a(id, lease_token, state, run_at, refund, error)
), settled AS (
    UPDATE fleet.jobs j
    SET state = a.state::fleet.job_state,
        run_at = coalesce(a.run_at, j.run_at),
        attempts = j.attempts - a.refund,
        lease_owner = NULL,
        finished_at = CASE WHEN a.state IN ('completed', 'dead') THEN now() END,
        errors = CASE WHEN a.error IS NULL THEN j.errors ELSE j.errors || jsonb_build_array(a.error) END
    FROM acks a
    -- id = ANY($1) makes the jobs side primary-key lookups; the acker's connection
    -- disables nested loops, so the join with the batch is hashed (a job table just
    -- ANALYZEd while idle says "no running jobs", and a nested loop on that estimate
    -- is O(batch x running)).
    WHERE j.id = ANY ($1::bigint[])
      AND j.id = a.id AND j.lease_token = a.lease_token AND j.state = 'running'
    RETURNING j.id, j.job_name, a.state
), counted AS (
    SELECT fleet.count_moves(array_agg(job_name), array_agg('running'::fleet.job_state),
                             array_agg(state::fleet.job_state)) AS moved
    FROM settled
)
SELECT id AS "id!" FROM settled WHERE (SELECT moved FROM counted) >= 0
