-- Pipes schema. PostgreSQL is the only source of truth; every secret column is
-- AES-256-GCM ciphertext (see src/crypto.rs) bound to its table, column and row.
-- No trigger keeps one table in step with another: the code that owns a table
-- writes it (the refresh schedule: src/scheduler/schedule.rs).

CREATE TABLE integrations (
    id                  text PRIMARY KEY,
    slug                text NOT NULL UNIQUE,
    provider            text NOT NULL,
    description         text NOT NULL DEFAULT '',
    enabled             boolean NOT NULL DEFAULT true,
    state               text NOT NULL DEFAULT 'valid' CHECK (state IN ('valid', 'invalid')),
    state_reason        text,
    scopes              text[] NOT NULL DEFAULT '{}',
    client_id           text NOT NULL,
    client_secret_enc   bytea,
    redacted_secret     text NOT NULL DEFAULT '',
    custom_provider     jsonb,
    settings            jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Token versions come from one sequence, so they only ever grow, across
-- accounts too: a cache write can always tell which of two values is newer,
-- even after an account is deleted and connected again.
CREATE SEQUENCE token_versions;

CREATE TABLE connected_accounts (
    id                  text PRIMARY KEY,
    integration_id      text NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    user_id             text NOT NULL,
    organization_id     text,
    state               text NOT NULL
                        CHECK (state IN ('connected', 'needs_reauthorization', 'disconnected')),
    access_token_enc    bytea,
    refresh_token_enc   bytea,
    expires_at          timestamptz,
    scopes              text[] NOT NULL DEFAULT '{}',
    -- Bumped (from token_versions) on every token or state write; orders cache writes.
    token_version       bigint NOT NULL DEFAULT 0,
    -- Single-flight lease for refreshes (DESIGN 2.3); expires so a crash releases it.
    lease_id            text,
    lease_until         timestamptz,
    refresh_failures    integer NOT NULL DEFAULT 0,
    last_refresh_error  text,
    last_refreshed_at   timestamptz,
    reauthorization_reason text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT connected_accounts_owner_unique
        UNIQUE NULLS NOT DISTINCT (integration_id, user_id, organization_id)
)
-- A fifth of every page left free, so the frequent updates that touch no indexed
-- column (a refresh's lease, its stored tokens) stay on their page as HOT updates,
-- writing no index entry (docs/benchmarks.md, the refresh pipeline).
WITH (fillfactor = 80);

CREATE INDEX connected_accounts_user_idx ON connected_accounts (user_id, organization_id);

-- The refresh schedule: one narrow row per connected account that has a refresh
-- token and a time to refresh, written only by src/scheduler/schedule.rs in the
-- writer's own transaction. Narrow, so that at a million accounts the due part
-- and its index stay in the buffer pool.
CREATE TABLE refresh_schedule (
    refresh_at          timestamptz NOT NULL,
    account_id          text PRIMARY KEY REFERENCES connected_accounts (id) ON DELETE CASCADE,
    integration_id      text NOT NULL
);

-- The claim walks the due schedule in key order, (refresh_at, account_id), one
-- window at a time from its cursor, reading the index alone: its cost grows with
-- the number of due accounts, not the number stored.
CREATE INDEX refresh_schedule_walk_idx ON refresh_schedule (refresh_at, account_id) INCLUDE (integration_id);

-- A scheduler's claim on an account whose refresh job is in flight; the primary
-- key keeps two schedulers from claiming one account. Storing a token, moving or
-- leaving the schedule deletes it; a retry waiting in a delay queue moves
-- enqueued_at into the future; a lost job makes the account claimable again after
-- PIPES_REQUEUE_AFTER.
--
-- No foreign key: checking one locks the account's schedule row, a write on the
-- heap page of every claimed account, where a claim otherwise inserts its rows on
-- a few fresh pages however many accounts are stored.
CREATE TABLE refresh_claims (
    enqueued_at     timestamptz NOT NULL,
    -- The claim that made the row (src/scheduler/schedule.rs): its ULID as a uuid.
    claim_id        uuid NOT NULL,
    -- The schedule entry as the claim read it, returned from its insert instead of
    -- joining the walk a second time. NULL for a claim the CLI made.
    refresh_at      timestamptz,
    integration_id  text,
    account_id      text PRIMARY KEY
);

CREATE TABLE oauth_states (
    state_hash          text PRIMARY KEY,
    integration_id      text NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    user_id             text NOT NULL,
    organization_id     text,
    return_to           text,
    scopes              text[] NOT NULL DEFAULT '{}',
    pkce_verifier_enc   bytea,
    expires_at          timestamptz NOT NULL,
    used_at             timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX oauth_states_expires_idx ON oauth_states (expires_at);
-- Counting an owner's open connect flows (src/connect.rs, MAX_OPEN_STATES).
CREATE INDEX oauth_states_open_owner_idx ON oauth_states (user_id, organization_id) WHERE used_at IS NULL;

CREATE TABLE api_keys (
    id                  text PRIMARY KEY,
    name                text NOT NULL,
    role                text NOT NULL CHECK (role IN ('admin', 'tokens')),
    key_hash            text NOT NULL UNIQUE,
    key_prefix          text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_used_at        timestamptz,
    revoked_at          timestamptz
);

CREATE TABLE webhook_endpoints (
    id                  text PRIMARY KEY,
    endpoint_url        text NOT NULL,
    secret_enc          bytea NOT NULL,
    status              text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    events              text[] NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The event outbox: written in the same transaction as the change it describes,
-- relayed to the webhook queue by the scheduler (relayed_at), kept for GET /events.
CREATE TABLE events (
    seq                 bigserial UNIQUE,
    id                  text PRIMARY KEY,
    event               text NOT NULL,
    data                jsonb NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    relayed_at          timestamptz
);
CREATE INDEX events_unrelayed_idx ON events (seq) WHERE relayed_at IS NULL;
CREATE INDEX events_event_idx ON events (event, seq);

CREATE TABLE webhook_deliveries (
    id                  text PRIMARY KEY,
    event_id            text NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint_id         text NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts            integer NOT NULL DEFAULT 0,
    last_attempt_at     timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_status_idx ON webhook_deliveries (status, updated_at);

CREATE TABLE webhook_attempts (
    id                  bigserial PRIMARY KEY,
    delivery_id         text NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt             integer NOT NULL,
    status_code         integer,
    latency_ms          integer NOT NULL,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id);

-- Roles report here so `pipes status` can say which were seen alive recently.
CREATE TABLE role_heartbeats (
    role                text NOT NULL,
    instance            text NOT NULL,
    last_seen           timestamptz NOT NULL,
    PRIMARY KEY (role, instance)
);

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
