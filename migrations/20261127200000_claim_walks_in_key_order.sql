-- The claim walks the due schedule in key order, (refresh_at, account_id), a window of
-- one batch at a time from where the last one ended, and then filters the window.
--
-- With refresh_at alone as the key, the walk had to order by (refresh_at, account_id)
-- itself: each batch read every due entry after its cursor, sorted them and kept the
-- first batch-full, so a tick claiming 100,000 due accounts in batches of 10,000 read
-- about 550,000 entries, and checked each one against the claims. Now each batch reads
-- its window and stops.
CREATE INDEX refresh_schedule_walk_idx ON refresh_schedule (refresh_at, account_id) INCLUDE (integration_id);
DROP INDEX refresh_schedule_refresh_at_idx;
