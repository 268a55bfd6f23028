-- Connect flows bound to whoever started them (securing authorizations).
--
-- binding: how the callback knows the browser coming back is the one that started:
--   confirmation    an API-started flow: the person confirmed on Pipes' page, which set the
--                   browser cookie (browser_hash) before sending them to the provider;
--   browser         a widget flow: the widget's authorize set the browser cookie;
--   code_challenge  session binding: the callback saves nothing, it hands the application a
--                   connect_code that its server finishes with the code_verifier.
ALTER TABLE oauth_states
    ADD COLUMN binding text NOT NULL DEFAULT 'browser'
        CHECK (binding IN ('confirmation', 'browser', 'code_challenge')),
    -- The confirmation page's single-use ticket (its hash), and when it was used.
    ADD COLUMN confirmation_hash text,
    ADD COLUMN confirmed_at timestamptz,
    -- The provider's authorization URL (it carries the state), sealed, for the confirmation page.
    ADD COLUMN authorization_url_enc bytea,
    -- The hash of the browser cookie the flow must come back with.
    ADD COLUMN browser_hash text,
    -- The widget token that started the flow (its hash), to bound its open flows.
    ADD COLUMN widget_token_hash text,
    -- code_challenge flows: the application's S256 challenge; after the callback, the
    -- connect_code handed to return_to (its hash), the provider's code (sealed) until
    -- finish exchanges it, and the connect_code's deadline.
    ADD COLUMN code_challenge text,
    ADD COLUMN connect_code_hash text,
    ADD COLUMN provider_code_enc bytea,
    ADD COLUMN connect_code_expires_at timestamptz,
    ADD COLUMN finished_at timestamptz;

-- Flows begun before this migration were bound to nothing: they can no longer complete.
UPDATE oauth_states SET pkce_verifier_enc = NULL WHERE used_at IS NULL;
UPDATE oauth_states SET used_at = now() WHERE used_at IS NULL;

CREATE UNIQUE INDEX oauth_states_confirmation_key ON oauth_states (confirmation_hash) WHERE confirmation_hash IS NOT NULL;
CREATE UNIQUE INDEX oauth_states_connect_code_key ON oauth_states (connect_code_hash) WHERE connect_code_hash IS NOT NULL;
CREATE INDEX oauth_states_open_widget_idx ON oauth_states (widget_token_hash) WHERE used_at IS NULL AND widget_token_hash IS NOT NULL;
