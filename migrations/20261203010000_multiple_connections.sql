-- Several accounts per owner and integration. The owner's `compatibility` account is
-- the one every request that names no account selects (at most one per owner); any
-- further account is `standard`, selected by its id. An account's role is fixed for
-- its lifetime. `account_identifier` is the provider's subject of the account (one
-- account per subject and owner); `account_display_name` a label.

ALTER TABLE integrations
    -- Whether an owner may add accounts beside the first (off until an operator allows it).
    ADD COLUMN multiple_connections boolean NOT NULL DEFAULT false;

ALTER TABLE connected_accounts
    ADD COLUMN connection_role text NOT NULL DEFAULT 'compatibility'
        CHECK (connection_role IN ('compatibility', 'standard')),
    ADD COLUMN account_identifier text,
    ADD COLUMN account_display_name text,
    DROP CONSTRAINT connected_accounts_owner_unique;

CREATE UNIQUE INDEX connected_accounts_compatibility_key
    ON connected_accounts (integration_id, user_id, organization_id) NULLS NOT DISTINCT
    WHERE connection_role = 'compatibility';

CREATE UNIQUE INDEX connected_accounts_identifier_key
    ON connected_accounts (integration_id, user_id, organization_id, account_identifier) NULLS NOT DISTINCT
    WHERE account_identifier IS NOT NULL;


-- What a connect flow was started for: a plain connect (NULL), `add` (another
-- account) or `reauthorize` (the account named), and the label to give the account.
ALTER TABLE oauth_states
    ADD COLUMN connection_intent text CHECK (connection_intent IN ('add', 'reauthorize')),
    ADD COLUMN connected_account_id text,
    ADD COLUMN set_display_name boolean NOT NULL DEFAULT false,
    ADD COLUMN account_display_name text;

-- The name an endpoint receives an event under: the one it subscribed to, of either
-- spelling (`crate::events::Family`). NULL: the event's own.
ALTER TABLE webhook_deliveries ADD COLUMN event_name text;
