-- The schedule kept in step with one set-based statement per UPDATE of
-- connected_accounts, instead of a PL/pgSQL call per updated row. A refresh batch
-- stores tokens for dozens of accounts in one UPDATE; the row trigger ran its
-- schedule upsert and its claim delete once per row (38 + 11 µs of statement time per
-- row in benches/refresh.sh, by pg_stat_statements). This one runs each once per
-- statement, over the rows whose schedule changed, finding them by key.
--
-- A statement trigger that reads the transition tables cannot name columns
-- (`UPDATE OF ...`), so it fires for every UPDATE, a lease included; the join below
-- keeps only the rows the row trigger's WHEN picked, finds none for a lease and
-- returns. Inserts keep their row trigger (refresh_schedule_sync, unchanged): they
-- are rare, one per connection.
CREATE FUNCTION refresh_schedule_sync_updates() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed text[];
    scheduled text[];
    integration_ids text[];
    refresh_ats timestamptz[];
    unscheduled text[];
BEGIN
    -- The rows whose schedule changed (what the row trigger's WHEN picked), in id order:
    -- the order their rows were locked in, so two batches wait for each other in one
    -- direction only. Arrays, so that each statement below finds its rows by key.
    SELECT array_agg(n.id),
           array_agg(n.id ORDER BY n.id) FILTER (WHERE s.due),
           array_agg(n.integration_id ORDER BY n.id) FILTER (WHERE s.due),
           array_agg(n.refresh_at ORDER BY n.id) FILTER (WHERE s.due),
           array_agg(n.id) FILTER (WHERE NOT s.due)
    INTO changed, scheduled, integration_ids, refresh_ats, unscheduled
    FROM new_rows n JOIN old_rows o ON o.id = n.id,
         LATERAL (SELECT n.state = 'connected' AND n.refresh_at IS NOT NULL AND n.refresh_token_enc IS NOT NULL) AS s(due)
    WHERE o.state IS DISTINCT FROM n.state
       OR o.refresh_at IS DISTINCT FROM n.refresh_at
       OR (o.refresh_token_enc IS NULL) <> (n.refresh_token_enc IS NULL)
       OR o.token_version IS DISTINCT FROM n.token_version
       OR o.integration_id IS DISTINCT FROM n.integration_id;
    IF changed IS NULL THEN
        -- A lease, a failure count, a timestamp: nothing the schedule holds.
        RETURN NULL;
    END IF;
    IF scheduled IS NOT NULL THEN
        INSERT INTO refresh_schedule (account_id, integration_id, refresh_at)
        SELECT * FROM unnest(scheduled, integration_ids, refresh_ats)
        ON CONFLICT (account_id) DO UPDATE
            SET refresh_at = EXCLUDED.refresh_at, integration_id = EXCLUDED.integration_id;
    END IF;
    IF unscheduled IS NOT NULL THEN
        DELETE FROM refresh_schedule WHERE account_id = ANY (unscheduled);
    END IF;
    -- Every change clears the claim: a token stored or refresh_at moved has nothing left
    -- to wait for, and neither has an account leaving the schedule.
    DELETE FROM refresh_claims WHERE account_id = ANY (changed);
    RETURN NULL;
END
$$;

DROP TRIGGER refresh_schedule_update ON connected_accounts;
CREATE TRIGGER refresh_schedule_update
    AFTER UPDATE ON connected_accounts
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT
    EXECUTE FUNCTION refresh_schedule_sync_updates();
