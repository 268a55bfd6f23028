-- API keys of the `relay` role: they call provider APIs through Pipes and read no token.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check CHECK (role IN ('admin', 'tokens', 'relay'));
