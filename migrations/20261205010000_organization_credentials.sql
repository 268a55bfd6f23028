-- Organization-scoped providers: an integration whose OAuth app each organization brings
-- (credentials_type `organization`), and every organization's overrides of a provider.
ALTER TABLE integrations
    ADD COLUMN credentials_type text NOT NULL DEFAULT 'custom'
        CHECK (credentials_type IN ('custom', 'organization'));

-- One organization's configuration of a provider (by slug: it applies to the provider's
-- user-owned and organization-owned roots alike). NULL `enabled` and `scopes` inherit
-- the integration's. The OAuth app is the organization's own, for integrations with
-- organization credentials: the secret sealed to the row's id.
CREATE TABLE organization_configurations (
    id                    text PRIMARY KEY,
    organization_id       text NOT NULL,
    slug                  text NOT NULL,
    enabled               boolean,
    scopes                text[],
    client_id             text,
    client_secret_enc     bytea,
    client_secret_last_4  text,
    config                jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, slug),
    CONSTRAINT organization_configurations_client CHECK ((client_id IS NULL) = (client_secret_enc IS NULL))
);
