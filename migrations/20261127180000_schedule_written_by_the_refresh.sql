-- The refresh path keeps the schedule in step itself; every other writer still has
-- a trigger do it.
--
-- The statement trigger of 20261127160000 fired for every UPDATE of
-- connected_accounts, a lease included, and copied every updated row (tokens and all)
-- into two transition tables, then joined them to find the rows whose schedule had
-- changed. In benches/refresh.sh that was 40 of PostgreSQL's 60-70 µs per refresh.
--
-- Now:
-- * The refresh's batched store (StoreBatch in src/store/accounts.rs), the one writer
--   that moves a schedule on every refresh, writes refresh_schedule and deletes the
--   claims in the same statement as the tokens, from the rows it stored. Its
--   transaction says so with the setting `pipes.schedule_written = on`.
-- * Every other writer (connect, reauthorization, import, the CLI, an operator's
--   UPDATE) fires the row trigger below, as before 20261127160000. It fires only when
--   a column the schedule depends on is set: a lease, a release or a failure count
--   sets none of them and fires nothing, not even a WHEN check.
DROP TRIGGER refresh_schedule_update ON connected_accounts;
DROP FUNCTION refresh_schedule_sync_updates();

CREATE TRIGGER refresh_schedule_update
    AFTER UPDATE OF state, refresh_at, refresh_token_enc, token_version, integration_id ON connected_accounts
    FOR EACH ROW
    WHEN ((OLD.state IS DISTINCT FROM NEW.state
           OR OLD.refresh_at IS DISTINCT FROM NEW.refresh_at
           OR (OLD.refresh_token_enc IS NULL) <> (NEW.refresh_token_enc IS NULL)
           OR OLD.token_version IS DISTINCT FROM NEW.token_version
           OR OLD.integration_id IS DISTINCT FROM NEW.integration_id)
          -- Set (transaction-local) only by a statement that wrote the schedule itself.
          AND current_setting('pipes.schedule_written', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION refresh_schedule_sync();
