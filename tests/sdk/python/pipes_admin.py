"""Drives a running Pipes server through the official, unmodified Python SDK
(`workos` 10.8): integrations, an imported connected account, the data-provider
listing, a token read and the deletes. Every answer must parse (the SDK's models
are strict: a missing key raises). Any failed check raises, so the exit code tells
the Rust test (tests/it/sdk_python.rs) the outcome; the last line printed is
{"ok": true}.

Environment: PIPES_URL, PIPES_API_KEY (admin), PIPES_SLUG, PIPES_DEMO_URL,
PIPES_CLIENT_ID, PIPES_CLIENT_SECRET.
"""

import json
import os
from datetime import datetime, timedelta, timezone

from workos import WorkOSClient
from workos.pipes.models import CustomProviderDefinition, DataIntegrationCredentialsInput

env = os.environ
client = WorkOSClient(api_key=env["PIPES_API_KEY"], base_url=env["PIPES_URL"], max_retries=0)
pipes = client.pipes
slug = env["PIPES_SLUG"]
demo = env["PIPES_DEMO_URL"]
secret = env["PIPES_CLIENT_SECRET"]
user, org = "user_py", "org_py"

integration = pipes.create_data_integration(
    provider=slug,
    description="Created by the Python SDK",
    enabled=True,
    scopes=["read", "write"],
    credentials=DataIntegrationCredentialsInput(type="custom", client_id=env["PIPES_CLIENT_ID"], client_secret=secret),
    custom_provider=CustomProviderDefinition(
        name="Demo via Python",
        authorization_url=f"{demo}/authorize",
        token_url=f"{demo}/token",
        pkce_enabled=True,
    ),
)
assert integration.slug == slug and integration.id.startswith("data_integration_"), integration
assert integration.credentials.client_id == env["PIPES_CLIENT_ID"]
assert integration.installation is None
assert secret not in repr(integration), "the secret is never returned"

listed = pipes.list_data_integrations(limit=10)
assert any(i.slug == slug for i in listed.data), listed
assert pipes.get_data_integration(slug).id == integration.id
updated = pipes.update_data_integration(slug, description="Updated by the Python SDK")
assert updated.description == "Updated by the Python SDK"

in_an_hour = datetime.now(timezone.utc) + timedelta(hours=1)
account = pipes.create_user_connected_account(
    user,
    slug,
    access_token="py-access-1",
    refresh_token="py-refresh-1",
    expires_at=in_an_hour,
    scopes=["read"],
    organization_id=org,
)
assert account.id.startswith("data_installation_") and account.user_id == user and account.organization_id == org
assert getattr(account.state, "value", account.state) == "connected"
assert getattr(account.connection_role, "value", account.connection_role) == "compatibility"
assert account.account_identifier is None and account.account_display_name is None
assert pipes.get_user_connected_account(user, slug, organization_id=org).id == account.id
replaced = pipes.update_user_connected_account(
    user, slug, access_token="py-access-2", expires_at=in_an_hour, scopes=["read"], organization_id=org
)
assert replaced.id == account.id

providers = pipes.list_user_data_providers(user, organization_id=org)
row = next(p for p in providers.data if p.slug == slug)
assert row.connected_account is not None and row.connected_account.id == account.id, row
assert [a.id for a in row.connected_accounts] == [account.id], row

token = pipes.get_access_token(slug, user_id=user, organization_id=org)
assert token.active is True and token.access_token.access_token == "py-access-2", token

pipes.delete_user_connected_account(user, slug, organization_id=org)
try:
    pipes.get_user_connected_account(user, slug, organization_id=org)
    raise AssertionError("the account is gone")
except Exception as err:  # the SDK's NotFoundError
    assert type(err).__name__ == "NotFoundError", err
pipes.delete_data_integration(slug)
print(json.dumps({"ok": True}))
