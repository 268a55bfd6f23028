-- API-key and client-credentials integrations.
--
-- An integration authenticates its accounts one way, fixed at creation: `oauth` (the
-- authorization-code flow), `api_key` (each account's key, stored as given) or
-- `client_credentials` (each account's own client id and secret, exchanged for access
-- tokens with the client_credentials grant).
ALTER TABLE integrations
    ADD COLUMN auth_method text NOT NULL DEFAULT 'oauth'
        CHECK (auth_method IN ('oauth', 'api_key', 'client_credentials'));

-- An account has its integration's method. Its credential is what a read vends: the
-- access token column holds an API key as given, or the token the client credentials
-- obtained. A client-credentials account keeps its client (the secret sealed); the last
-- four characters of the key or the client secret are kept in the clear to show.
ALTER TABLE connected_accounts
    ADD COLUMN auth_method text NOT NULL DEFAULT 'oauth'
        CHECK (auth_method IN ('oauth', 'api_key', 'client_credentials')),
    ADD COLUMN client_id text,
    ADD COLUMN client_secret_enc bytea,
    ADD COLUMN secret_last_4 text,
    -- Non-secret values given with the credential (client credentials' `config`).
    ADD COLUMN config jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD CONSTRAINT connected_accounts_client_credentials CHECK (
        (auth_method = 'client_credentials') = (client_id IS NOT NULL AND client_secret_enc IS NOT NULL));
