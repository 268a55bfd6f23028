-- Counting an owner's open connect flows (src/connect.rs, MAX_OPEN_STATES).
CREATE INDEX oauth_states_open_owner_idx ON oauth_states (user_id, organization_id) WHERE used_at IS NULL;
