-- Connection owners: an integration root is user-owned or organization-owned, and
-- its connected accounts are owned the same way. A user-owned account has a
-- user_id (and optionally an organization_id); an organization-owned (shared)
-- account has an organization_id and no user_id, and remembers the member who
-- established it. One provider may have a root of each kind under the same slug.

ALTER TABLE integrations
    ADD COLUMN ownership text NOT NULL DEFAULT 'user' CHECK (ownership IN ('user', 'organization')),
    DROP CONSTRAINT integrations_slug_key,
    ADD CONSTRAINT integrations_slug_ownership_key UNIQUE (slug, ownership),
    -- The target of the accounts' (integration_id, ownership) foreign key.
    ADD CONSTRAINT integrations_id_ownership_key UNIQUE (id, ownership);

ALTER TABLE connected_accounts
    ADD COLUMN ownership text NOT NULL DEFAULT 'user',
    ADD COLUMN established_by_user_id text,
    ALTER COLUMN user_id DROP NOT NULL,
    ADD CONSTRAINT connected_accounts_owner_shape CHECK (
        (ownership = 'user' AND user_id IS NOT NULL)
        OR (ownership = 'organization' AND user_id IS NULL AND organization_id IS NOT NULL)),
    -- An account is owned the way its integration root is.
    DROP CONSTRAINT connected_accounts_integration_id_fkey,
    ADD CONSTRAINT connected_accounts_integration_root_fkey FOREIGN KEY (integration_id, ownership)
        REFERENCES integrations (id, ownership) ON DELETE CASCADE;

-- An organization's shared accounts, listed by organization alone.
CREATE INDEX connected_accounts_organization_owned_idx ON connected_accounts (organization_id)
    WHERE user_id IS NULL;

-- An invalidation names its cache entry by the integration and the part of the key
-- that names the owner (`crate::cache::owner_segment`), so the drain needs no owner
-- rules of its own.
ALTER TABLE cache_invalidations ADD COLUMN owner_segment text;
UPDATE cache_invalidations
   SET owner_segment = substr(encode(sha256(
           convert_to(user_id, 'UTF8') || '\x00'::bytea
           || CASE WHEN organization_id IS NULL THEN '\x00'::bytea ELSE convert_to(organization_id, 'UTF8') END
       ), 'hex'), 1, 32);
ALTER TABLE cache_invalidations
    ALTER COLUMN owner_segment SET NOT NULL,
    DROP COLUMN user_id,
    DROP COLUMN organization_id;
