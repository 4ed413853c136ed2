-- The heartbeat's rescue looks for dead workers' jobs worker by worker (probing
-- jobs_leased) and marks each dead worker swept once done, rather than scanning every
-- running job every heartbeat: that scan visits every version ever leased while an
-- old snapshot holds vacuum back (measured: 69 ms per heartbeat per process after
-- 2.3 minutes of one idle-in-transaction session at 1,000 jobs/s, and growing).
-- A worker's heartbeat or registration clears the mark: alive again, it may claim.
ALTER TABLE fleet.workers ADD COLUMN swept_at timestamptz;
