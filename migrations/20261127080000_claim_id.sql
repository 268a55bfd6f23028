-- Each scheduler claim stamps the accounts it marks with an id of its own, so a claim
-- that committed while its answer was lost (the connection to PostgreSQL dropped) can
-- be found and published on the next tick instead of waiting PIPES_REQUEUE_AFTER.
-- Nullable, no default: adding it rewrites nothing.
ALTER TABLE connected_accounts ADD COLUMN claim_id text;
