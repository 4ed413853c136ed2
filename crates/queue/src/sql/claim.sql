-- Claim up to $2 due jobs of queue $1 for worker $3, in priority then due order,
-- from the floor ($4, $5, $6) on.
-- At most one job per concurrency key is running fleet-wide: keys already running are
-- skipped, one job per key is picked from the batch, and the partial unique index
-- jobs_one_running_per_concurrency_key refuses the rare race between two claimers.
-- Every claim draws a fresh random lease_token: the fencing token that acks must
-- present. Random, not a counter: the queue commits asynchronously, and a claim lost
-- in a server crash must not let the next claim reuse its token (the lost claim's
-- worker may still be running it). `claims` counts claims, for people.
WITH candidates AS (
    SELECT j.id, j.concurrency_key
    FROM fleet.jobs j
    WHERE j.job_name = $1
      AND j.state = 'available'
      AND j.run_at <= now()
      -- The floor ($4, $5, $6): where in the claim index this claim starts. A sweep
      -- passes the lowest position (NULL run_at): the head.
      AND (-(j.priority::int), j.run_at, j.id)
          >= ($4::int, coalesce($5::timestamptz, '-infinity'), $6::bigint)
      AND NOT EXISTS (SELECT 1 FROM fleet.paused_queues p WHERE p.job_name = $1)
      AND (j.concurrency_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM fleet.jobs r
            WHERE r.concurrency_key = j.concurrency_key AND r.state = 'running'))
    ORDER BY -(j.priority::int), j.run_at, j.id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT DISTINCT ON (coalesce(concurrency_key, id::text)) id
    FROM candidates
    ORDER BY coalesce(concurrency_key, id::text), id
), claimed AS (
    UPDATE fleet.jobs j
    SET state = 'running',
        attempts = j.attempts + 1,
        claims = j.claims + 1,
        lease_token = gen_random_uuid(),
        lease_owner = $3,
        started_at = now()
    -- An array of ids, not a join: always primary-key lookups, whatever the estimates.
    WHERE j.id = ANY (ARRAY(SELECT id FROM picked))
    RETURNING j.id, j.payload, j.attempts, j.max_attempts, j.lease_token, j.run_at, j.created_at, j.started_at,
              -(j.priority::int) AS rank
), counted AS (
    SELECT fleet.count_moves(array_agg($1::text), array_agg('available'::fleet.job_state),
                             array_agg('running'::fleet.job_state)) AS moved
    FROM claimed
)
SELECT id AS "id!", payload AS "payload!", attempts AS "attempts!", max_attempts AS "max_attempts!",
       lease_token AS "lease_token!", run_at AS "run_at!", created_at AS "created_at!",
       started_at AS "started_at!", rank AS "rank!"
FROM claimed WHERE (SELECT moved FROM counted) >= 0
