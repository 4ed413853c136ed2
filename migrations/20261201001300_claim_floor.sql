-- Claims start at a floor, not at the head of the claim index.
--
-- Every claim leaves the claimed row's entry in jobs_claim behind (the row version
-- that was `available` is dead). Vacuum removes such entries, and index scans mark
-- them killed, only once no snapshot can still see the old version: while a long
-- transaction holds the xmin horizon (an idle-in-transaction session, a report),
-- every claim that starts at the head of the index visits the heap for each of them.
-- Measured with one idle-in-transaction session at 1,000 jobs/s: 107,000 heap
-- fetches and 78 ms per claim after 2.3 minutes, and falling throughput.
--
-- So a fetcher starts its claims at a floor: the position of the oldest job it last
-- claimed, less a margin (crates/queue/src/fetcher.rs), and only every so often
-- sweeps from the head. The start position is a row comparison on the index's own
-- columns, which is why the priority becomes an ascending expression here
-- (`-(priority::int)`, DESC order unchanged: no smallint negation overflow).
DROP INDEX fleet.jobs_claim;
CREATE INDEX jobs_claim ON fleet.jobs (job_name, (-(priority::int)), run_at, id)
    WHERE state = 'available';

-- Vacuum this table unthrottled (cost-based delay let dead tuples pile up between
-- rounds at a steady 1,000 jobs/s), and never truncate it: truncation takes an
-- ACCESS EXCLUSIVE lock, which stops every claim, ack and enqueue while it holds it,
-- and a queue table's tail empties and refills all the time.
ALTER TABLE fleet.jobs SET (autovacuum_vacuum_cost_delay = 0, vacuum_truncate = false);
