-- Fencing that survives a server crash (issue 8). The queue's connections commit
-- asynchronously, so a crash can lose the last claims, acks and heartbeats.
--
-- - lease_token becomes a random uuid drawn by every claim. It was a counter: a
--   claim lost in a crash let the next claim reuse the token that the lost claim's
--   worker was still running under, and that worker's late ack then settled the new
--   attempt. `claims` keeps the count for people.
-- - workers report the jobs they hold with every heartbeat (`held`), so a job left
--   `running` under a live worker that no longer holds it (its ack was lost) is
--   rescued (src/queue/sql/rescue.sql).
--
-- Deploy note: workers of the previous version present integer tokens and fail to
-- ack against this schema (loudly: a type error, retried); stop them before this
-- migration runs, as the release phase of a Procfile deploy does.
ALTER TABLE fleet.jobs RENAME COLUMN lease_token TO claims;
ALTER TABLE fleet.jobs ADD COLUMN lease_token uuid;
ALTER TABLE fleet.workers ADD COLUMN held bigint[] NOT NULL DEFAULT '{}';
