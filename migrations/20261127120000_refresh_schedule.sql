-- The refresh schedule in a narrow table of its own. The scheduler's claim used to
-- mark enqueued_at/claim_id on the wide connected_accounts rows (encrypted tokens,
-- scopes, ...): at 1,000,000 stored / 10,000 due its due rows sat on ~8,000 heap
-- pages that no longer fitted in shared_buffers, and the claim read them from the OS
-- (156 ms against 97 ms at 100,000 stored). A schedule row is ~130 bytes, a fraction
-- of an account row: the schedule and its index stay in the buffer pool.
--
-- A row exists exactly while its account is connected, has a refresh_at and a refresh
-- token (the predicate of the old partial due index). The trigger below keeps it so
-- for every writer of connected_accounts (connect callback, refresh, reauthorization,
-- disconnect, import, CLI, API), none of which has to know about this table; deleting
-- an account deletes its row through the foreign key.
CREATE TABLE refresh_schedule (
    -- Fixed-width columns first: no alignment padding between them.
    refresh_at          timestamptz NOT NULL,
    -- Set when a scheduler claimed the account to publish its job, moved into the
    -- future while the job's retry waits in a delay queue; a lost job makes the
    -- account due again after PIPES_REQUEUE_AFTER. Cleared when a token is stored.
    enqueued_at         timestamptz,
    -- The claim that set enqueued_at (src/scheduler/claim.rs): its ULID as a uuid,
    -- 16 bytes instead of 26 characters.
    claim_id            uuid,
    account_id          text PRIMARY KEY REFERENCES connected_accounts (id) ON DELETE CASCADE,
    integration_id      text NOT NULL
)
-- A claim sets enqueued_at and claim_id, which no index covers: with room left on
-- the page that update is HOT (no index entry written).
WITH (fillfactor = 85);

-- The claim walks this index from its cursor: its cost grows with the number of due
-- accounts, not with the number stored.
CREATE INDEX refresh_schedule_refresh_at_idx ON refresh_schedule (refresh_at);

-- Keeps refresh_schedule in step with connected_accounts. Storing a token (connect,
-- import, refresh: token_version moves) or moving refresh_at clears the claim, as the
-- writers of connected_accounts used to clear enqueued_at themselves.
CREATE FUNCTION refresh_schedule_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'connected' AND NEW.refresh_at IS NOT NULL AND NEW.refresh_token_enc IS NOT NULL THEN
        INSERT INTO refresh_schedule (account_id, integration_id, refresh_at)
        VALUES (NEW.id, NEW.integration_id, NEW.refresh_at)
        ON CONFLICT (account_id) DO UPDATE
            SET refresh_at = EXCLUDED.refresh_at, integration_id = EXCLUDED.integration_id,
                enqueued_at = NULL, claim_id = NULL;
    ELSIF TG_OP = 'UPDATE' THEN
        DELETE FROM refresh_schedule WHERE account_id = NEW.id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER refresh_schedule_insert
    AFTER INSERT ON connected_accounts
    FOR EACH ROW
    WHEN (NEW.state = 'connected' AND NEW.refresh_at IS NOT NULL AND NEW.refresh_token_enc IS NOT NULL)
    EXECUTE FUNCTION refresh_schedule_sync();

-- Only the writes that change what the schedule holds: a lease, a failure count or a
-- timestamp alone fires nothing.
CREATE TRIGGER refresh_schedule_update
    AFTER UPDATE OF state, refresh_at, refresh_token_enc, token_version, integration_id ON connected_accounts
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          OR OLD.refresh_at IS DISTINCT FROM NEW.refresh_at
          OR (OLD.refresh_token_enc IS NULL) <> (NEW.refresh_token_enc IS NULL)
          OR OLD.token_version IS DISTINCT FROM NEW.token_version
          OR OLD.integration_id IS DISTINCT FROM NEW.integration_id)
    EXECUTE FUNCTION refresh_schedule_sync();

-- The schedule as it stands, marks included. The claim ids are not carried over:
-- they are asked about only by the scheduler process that made them, which ran the
-- code before this migration (and ULID text, not uuids); a mark whose claim id is
-- gone expires after PIPES_REQUEUE_AFTER, as for any lost job.
INSERT INTO refresh_schedule (account_id, integration_id, refresh_at, enqueued_at)
SELECT id, integration_id, refresh_at, enqueued_at
FROM connected_accounts
WHERE state = 'connected' AND refresh_at IS NOT NULL AND refresh_token_enc IS NOT NULL;

DROP INDEX connected_accounts_due_idx;
ALTER TABLE connected_accounts DROP COLUMN enqueued_at, DROP COLUMN claim_id;
