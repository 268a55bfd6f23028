-- The scheduler's claims in a small table of their own. The claim used to mark
-- enqueued_at/claim_id on the refresh_schedule rows of the accounts it claimed: at
-- 1,000,000 stored / 10,000 due those rows sat on ~10,000 different heap pages (≈ 1,700
-- at 100,000 stored), and locking and updating a row on each of them (pin, lock, prune,
-- HOT update) was most of what still grew with the number stored (82 ms against 49 ms).
-- A claim now only reads the schedule and inserts its marks here: 10,000 new rows land
-- on a few fresh pages whatever the number stored.
--
-- A row exists while a scheduler claimed the account and its job has not finished:
-- storing a token (a refresh, a reconnect), moving refresh_at or leaving the schedule
-- deletes it (the trigger function below), as does a worker that found nothing to do;
-- a retry waiting in a delay queue moves enqueued_at into the future.
--
-- No foreign key: checking one looks the account up and locks its row (FOR KEY
-- SHARE), which writes to the heap page of every claimed account -- the very per-page
-- work this table is there to avoid, on the wider table (5,000 claims at 50,000
-- stored: 13 ms to insert, 32 ms more for the foreign key's checks). The triggers
-- below delete the claim when the account leaves the schedule or is deleted; a claim
-- that races with either (inserted just after) is deleted by the worker that finds
-- the account gone. A claim never makes an account due: the schedule does.
CREATE TABLE refresh_claims (
    -- Set by the claim (now()), moved into the future while the job's retry waits in
    -- a delay queue; a lost job makes the account claimable again after
    -- PIPES_REQUEUE_AFTER.
    enqueued_at     timestamptz NOT NULL,
    -- The claim that made the row (src/scheduler/claim.rs): its ULID as a uuid.
    claim_id        uuid NOT NULL,
    -- The schedule entry as the claim read it, so that the claim returns it from its
    -- insert instead of joining its due walk a second time (a join the planner, misled
    -- by a schedule just rewritten, ran as a nested loop: seconds per 10,000 claims).
    -- Only the claim sets them.
    refresh_at      timestamptz,
    integration_id  text,
    -- The conflict on this key is what keeps two schedulers from claiming one account.
    account_id      text PRIMARY KEY
);

-- The marks as they stand. Rows without enqueued_at carried no live claim.
INSERT INTO refresh_claims (account_id, enqueued_at, claim_id)
SELECT account_id, enqueued_at, coalesce(claim_id, gen_random_uuid())
FROM refresh_schedule
WHERE enqueued_at IS NOT NULL;

-- Same as before, except that the claim is cleared in refresh_claims. Every firing
-- clears it: an account that stays on the schedule had a token stored or its
-- refresh_at moved (the trigger's WHEN), one that leaves it has nothing to wait for.
CREATE OR REPLACE FUNCTION refresh_schedule_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'connected' AND NEW.refresh_at IS NOT NULL AND NEW.refresh_token_enc IS NOT NULL THEN
        INSERT INTO refresh_schedule (account_id, integration_id, refresh_at)
        VALUES (NEW.id, NEW.integration_id, NEW.refresh_at)
        ON CONFLICT (account_id) DO UPDATE
            SET refresh_at = EXCLUDED.refresh_at, integration_id = EXCLUDED.integration_id;
    ELSIF TG_OP = 'UPDATE' THEN
        DELETE FROM refresh_schedule WHERE account_id = NEW.id;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM refresh_claims WHERE account_id = NEW.id;
    END IF;
    RETURN NULL;
END
$$;

-- A deleted account takes its claim along (what ON DELETE CASCADE would do).
CREATE FUNCTION refresh_claims_clear() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM refresh_claims WHERE account_id = OLD.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER refresh_claims_delete
    AFTER DELETE ON connected_accounts
    FOR EACH ROW
    EXECUTE FUNCTION refresh_claims_clear();

ALTER TABLE refresh_schedule DROP COLUMN enqueued_at, DROP COLUMN claim_id;

-- The claim's due walk reads only the index: refresh_at in order from its cursor,
-- the account and the integration alongside, so on all-visible pages it never
-- touches the schedule's heap (pages not yet vacuumed cost a heap read, no write).
-- Same name as the index it replaces.
DROP INDEX refresh_schedule_refresh_at_idx;
CREATE INDEX refresh_schedule_refresh_at_idx ON refresh_schedule (refresh_at) INCLUDE (account_id, integration_id);

