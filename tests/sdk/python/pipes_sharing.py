"""Drives a running Pipes server through the official, unmodified Python SDK
(`workos` 10.8): both integration roots of a provider, an organization's shared
account, several accounts for one user, account selection, the token and
credential reads with every selector, authorize with every intent, API-key and
client-credentials integrations, and an organization's own OAuth app (`pipes_provider`). Every answer must parse (the SDK's models are strict). Any
failed check raises; the last line printed is {"ok": true, "methods": [...]}.

Environment: PIPES_URL, PIPES_API_KEY (admin), PIPES_SLUG, PIPES_DEMO_URL.
"""

import json
import os
import urllib.error
import urllib.parse
import urllib.request

from workos import WorkOSClient
from workos.pipes.models import CustomProviderDefinition, DataIntegrationCredentialsInput

env = os.environ
client = WorkOSClient(api_key=env["PIPES_API_KEY"], base_url=env["PIPES_URL"], max_retries=0)
pipes = client.pipes
slug = env["PIPES_SLUG"]
demo = env["PIPES_DEMO_URL"]
org = "org_py_shared"
called = set()


def call(name, *args, **kwargs):
    called.add(name)
    return getattr(pipes, name)(*args, **kwargs)


def refused(kind, code, name, *args, **kwargs):
    """The call raises the SDK's `kind` error with `code` (when given)."""
    try:
        call(name, *args, **kwargs)
    except Exception as err:  # noqa: BLE001 - checked below
        assert type(err).__name__ == kind, f"{name}: {type(err).__name__}: {err}"
        if code is not None:
            assert err.code == code, f"{name}: {err.code}"
        return err
    raise AssertionError(f"{name} should have raised {kind}")


def value(enum_or_str):
    return getattr(enum_or_str, "value", enum_or_str)


creds = DataIntegrationCredentialsInput(type="custom", client_id="py-client", client_secret="py-secret-shared")
provider = CustomProviderDefinition(name="Demo", authorization_url=f"{demo}/authorize", token_url=f"{demo}/token")
user_root = call("create_data_integration", provider=slug, enabled=True, credentials=creds, custom_provider=provider)
org_root = call(
    "create_data_integration",
    provider=slug,
    ownership="organization",
    enabled=True,
    credentials=creds,
    custom_provider=provider,
)
assert value(org_root.ownership) == "organization" and value(user_root.ownership) == "user"
only_org = call("list_data_integrations", ownership="organization")
assert [i.id for i in only_org.data] == [org_root.id], only_org
in_order = call("list_data_integrations", order="normal")
assert [i.id for i in in_order.data] == [user_root.id, org_root.id], in_order
assert call("list_data_integration_organization", slug).id == org_root.id
edited = call("update_data_integration_organization", slug, description="Shared")
assert edited.description == "Shared"
assert call("get_data_integration", slug).description != "Shared"
assert call("update_data_integration", slug, description="User-owned").description == "User-owned"

# Several accounts per owner are a Pipes setting (the SDK has no field for it).
request = urllib.request.Request(
    f"{env['PIPES_URL']}/data-integrations/{slug}",
    data=json.dumps({"multiple_connections": True}).encode(),
    method="PUT",
    headers={"Authorization": f"Bearer {env['PIPES_API_KEY']}", "Content-Type": "application/json"},
)
assert urllib.request.urlopen(request).status == 200

# Authorize: every intent answers a URL and the flow's state (the model requires it).
plain = call("authorize_data_integration", slug, user_id="user_py2")
# Without a code_challenge the URL is Pipes' confirmation page, never the provider's.
assert plain.url.startswith(env["PIPES_URL"].rstrip("/") + "/connect/") and plain.state, plain
shared_flow = call(
    "authorize_data_integration", slug, user_id="admin_py", organization_id=org, connection_owner="organization"
)
assert shared_flow.state != plain.state
call("authorize_data_integration", slug, user_id="user_py2", connection_intent="add", account_display_name="Second")
refused("UnprocessableEntityError", None, "authorize_data_integration", slug, user_id="u", code_challenge="x" * 43,
        code_challenge_method="plain")

# The organization's shared account.
shared = call("create_organization_connected_account", org, slug, user_id="admin_py", access_token="org-token")
assert shared.user_id is None and shared.organization_id == org and shared.established_by_user_id == "admin_py"
got = call("get_organization_connected_account", org, slug)
assert got.id == shared.id
replaced = call("update_organization_connected_account", org, slug, user_id="admin2_py", access_token="org-token-2")
assert replaced.id == shared.id and replaced.established_by_user_id == "admin2_py"
listed = call("list_organization_data_providers", org, supports_multiple_connections=True)
assert [p.connected_account.id for p in listed.data] == [shared.id], listed
assert value(listed.data[0].connection_owner) == "organization"
token = call("get_access_token", slug, user_id="member_py", organization_id=org, connection_owner="organization")
assert token.active is True and token.access_token.access_token == "org-token-2", token
own = call("get_access_token", slug, user_id="member_py", organization_id=org)
assert own.active is False and value(own.error) == "not_installed", "a member's own read never gets the shared token"

# Several accounts for one user, selected by id.
work = call(
    "create_user_connected_account", "user_py", slug, access_token="t-work", account_identifier="alice", account_display_name="Work"
)
personal = call(
    "create_user_connected_account",
    "user_py",
    slug,
    access_token="t-personal",
    connection_intent="add",
    account_identifier="bob",
    account_display_name="Work",
)
assert value(work.connection_role) == "compatibility" and value(personal.connection_role) == "standard"
assert personal.warnings and value(personal.warnings[0].code) == "duplicate_account_display_name", personal
refused("ConflictError", "account_selection_required", "get_access_token", slug, user_id="user_py",
        supports_multiple_connections=True)
refused("ConflictError", "account_selection_required", "get_user_connected_account", "user_py", slug,
        supports_multiple_connections=True)
named = call("get_access_token", slug, user_id="user_py", connected_account_id=personal.id)
assert named.access_token.access_token == "t-personal"
credential = call("create_data_integration_credential", slug, user_id="user_py", connected_account_id=personal.id)
assert credential.active is True and credential.credential.value == "t-personal", credential
refused("NotFoundError", "connected_account_not_found", "get_access_token", slug, user_id="someone",
        connected_account_id=personal.id)
renewed = call(
    "update_user_connected_account",
    "user_py",
    slug,
    access_token="t-personal-2",
    connected_account_id=personal.id,
    connection_intent="reauthorize",
    account_display_name=None,
)
assert renewed.id == personal.id and renewed.account_display_name is None, "null clears the label"
rows = call("list_user_data_providers", "user_py", supports_multiple_connections=True)
row = next(p for p in rows.data if p.slug == slug)
assert row.connected_account.id == work.id and len(row.connected_accounts) == 2, row
call("delete_user_connected_account", "user_py", slug, connected_account_id=personal.id)
assert call("get_user_connected_account", "user_py", slug).id == work.id

# API-key and client-credentials integrations. The fake provider knows the keys
# apikey_py_alpha_0123456789 / apikey_py_bravo_0123456789 and the client py-machine.
# The OAuth integration takes neither.
refused("UnprocessableEntityError", None, "create_data_integration_api_key", slug, user_id="u",
        secret="apikey_py_alpha_0123456789", connection_intent="add")
refused("UnprocessableEntityError", None, "update_data_integration_client_credentials", slug, user_id="u",
        client_id="c", client_secret="s")
# Where an API-key provider's keys go is Pipes' own `custom_provider.api_key`.
keyed = f"{slug}-keyed"
request = urllib.request.Request(
    f"{env['PIPES_URL']}/data-integrations",
    data=json.dumps({
        "provider": keyed, "auth_methods": ["api_key"], "enabled": True,
        "custom_provider": {"name": "Keyed", "api_key": {
            "placement": "header", "header": "X-Api-Key", "format": "{api_key}",
            "verify": {"method": "GET", "url": f"{demo}/api/me"}}},
    }).encode(),
    method="POST",
    headers={"Authorization": f"Bearer {env['PIPES_API_KEY']}", "Content-Type": "application/json"},
)
assert urllib.request.urlopen(request).status == 201
key_account = call("update_data_integration_api_key", keyed, user_id="user_py_key", secret="apikey_py_alpha_0123456789",
                   account_identifier="workspace_1")
assert value(key_account.auth_method) == "api_key" and key_account.api_key_last_4 == "6789", key_account
key_read = call("create_data_integration_credential", keyed, user_id="user_py_key")
assert key_read.active and value(key_read.credential.auth_method) == "api_key", key_read
assert key_read.credential.value == "apikey_py_alpha_0123456789" and key_read.credential.config == {}, key_read
rotated = call("update_data_integration_api_key", keyed, user_id="user_py_key", secret="apikey_py_bravo_0123456789",
               connected_account_id=key_account.id, connection_intent="reauthorize")
assert rotated.id == key_account.id and rotated.account_identifier == "workspace_1", rotated
assert call("get_access_token", keyed, user_id="user_py_key").access_token.access_token == "apikey_py_bravo_0123456789"
refused("UnprocessableEntityError", None, "update_data_integration_api_key", keyed, user_id="user_py_key",
        secret="apikey_py_refused_0123456789")
added_key = call("create_data_integration_api_key", keyed, user_id="user_py_key2", secret="apikey_py_alpha_0123456789",
                 connection_intent="add", organization_id=org)
assert added_key.user_id == "user_py_key2" and added_key.organization_id == org, added_key

machine = call(
    "create_data_integration",
    provider=f"{slug}-machine",
    auth_methods=["client_credentials"],
    enabled=True,
    scopes=["read"],
    custom_provider=CustomProviderDefinition(name="Machine", authorization_url=f"{demo}/authorize",
                                             token_url=f"{demo}/token", authenticate_via="basic_auth_header"),
)
assert [value(m) for m in machine.auth_methods] == ["client_credentials"] and machine.credentials is None, machine
cc = call("create_data_integration_client_credential", machine.slug, user_id="user_py_cc", client_id="py-machine",
          client_secret="ccsecret_py_0123456789", config={"region": "eu"}, connection_intent="add")
assert value(cc.auth_method) == "client_credentials" and cc.client_id == "py-machine", cc
assert cc.client_secret_last_4 == "6789", cc
cc_read = call("create_data_integration_credential", machine.slug, user_id="user_py_cc")
credential = cc_read.credential
assert value(credential.auth_method) == "client_credentials" and credential.expires_at, cc_read
assert credential.scopes == ["read"] and credential.metadata == {} and credential.config == {"region": "eu"}, cc_read
cc_again = call("update_data_integration_client_credentials", machine.slug, user_id="user_py_cc", client_id="py-machine",
                client_secret="ccsecret_py_0123456789")
assert cc_again.id == cc.id, cc_again
refused("UnprocessableEntityError", None, "update_data_integration_client_credentials", machine.slug,
        user_id="user_py_cc", client_id="py-machine", client_secret="ccsecret_refused_0123456789")
call("delete_data_integration", keyed)
call("delete_data_integration", machine.slug)

# Organization credentials: each organization brings its own OAuth app (pipes_provider).
byoa = call(
    "create_data_integration",
    provider=f"{slug}-byoa",
    enabled=True,
    scopes=["read", "write"],
    credentials=DataIntegrationCredentialsInput(type="organization"),
    custom_provider=CustomProviderDefinition(name="Own app", authorization_url=f"{demo}/authorize",
                                             token_url=f"{demo}/token"),
)
assert value(byoa.credentials.type) == "organization" and byoa.credentials.client_id is None, byoa


def provider_call(name, *args, **kwargs):
    provider_called.add(name)
    return getattr(client.pipes_provider, name)(*args, **kwargs)


provider_called = set()
listed = provider_call("list_organization_data_integration_configurations", org)
mine = next(c for c in listed.data if c.slug == byoa.slug)
assert mine.enabled and mine.scopes == ["read", "write"] and mine.config == {}, mine
assert value(mine.credentials.credentials_type) == "organization" and not mine.credentials.has_credentials, mine
assert mine.credentials.redirect_uri.endswith(f"/data-integrations/{byoa.slug}/callback"), mine
try:
    provider_call("update_organization_data_integration_configuration", org, byoa.slug, client_secret="py_org_0123456789")
    raise AssertionError("a secret without its client id was taken")
except Exception as err:  # noqa: BLE001 - checked below
    assert type(err).__name__ == "UnprocessableEntityError", err
configured = provider_call("update_organization_data_integration_configuration", org, byoa.slug,
                           client_id="py-org-app", client_secret="py_org_secret_0123456789", scopes=["read"])
assert configured.scopes == ["read"] and configured.credentials.has_credentials, configured
assert configured.credentials.client_id == "py-org-app" and configured.credentials.client_secret_last_four == "6789"


class Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


# A member's flow goes to the provider as the organization's app, asking for its scopes.
page = call("authorize_data_integration", byoa.slug, user_id="user_py_org", organization_id=org).url
try:
    urllib.request.build_opener(Stay).open(urllib.request.Request(page, data=b"", method="POST",
                                                                  headers={"Origin": env["PIPES_URL"]}))
    raise AssertionError("the confirmation page did not redirect")
except urllib.error.HTTPError as answer:
    assert answer.code == 303, answer.code
    to = urllib.parse.parse_qs(urllib.parse.urlparse(answer.headers["Location"]).query)
assert to["client_id"] == ["py-org-app"] and to["scope"] == ["read"], to
off = provider_call("update_organization_data_integration_configuration", org, byoa.slug, enabled=False, scopes=None)
assert off.enabled is False and off.scopes == ["read", "write"] and off.credentials.has_credentials, off
refused("NotFoundError", None, "authorize_data_integration", byoa.slug, user_id="user_py_org", organization_id=org)
call("delete_data_integration", byoa.slug)
refused("BadRequestError", "invalid_connect_code", "finish_connection", connect_code="x", code_verifier="y" * 43)

call("delete_organization_connected_account", org, slug)
refused("NotFoundError", None, "get_organization_connected_account", org, slug)
call("delete_data_integration_organization", slug)
refused("NotFoundError", "integration_not_found", "list_data_integration_organization", slug)
call("delete_data_integration", slug)
print(json.dumps({"ok": True, "methods": sorted(called), "provider_methods": sorted(provider_called)}))
