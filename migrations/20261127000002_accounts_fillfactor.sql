-- Leave a fifth of every heap page of connected_accounts free, so the frequent
-- updates that touch no indexed column (the scheduler's claim sets enqueued_at,
-- a refresh's lease sets lease_id/lease_until) stay on their page as HOT updates:
-- no new entry in any of the table's four indexes. With full pages each of them
-- wrote four index entries; at 1,000,000 stored / 10,000 due the claim took
-- ~560 ms instead of ~215 ms (benches/refresh.sh). Pages written before this
-- migration get the free space as they are rewritten (VACUUM FULL or
-- pg_repack apply it at once).
ALTER TABLE connected_accounts SET (fillfactor = 80);
