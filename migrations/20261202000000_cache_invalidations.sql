-- Invalidations of the Redis token cache that must not be lost: every account
-- change that removes or replaces a token writes one in its own transaction, so
-- a Redis failure between the commit and the tombstone cannot leave the old
-- token servable. Every role retries them until Redis has them (src/invalidations.rs).
CREATE TABLE cache_invalidations (
    id              bigserial PRIMARY KEY,
    integration_id  text NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    user_id         text NOT NULL,
    organization_id text,
    -- The account's token version after the change: older cached copies are gone.
    version         bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
