"""Reads tokens through the official Python SDK (`client.pipes.get_access_token`
and `create_data_integration_credential`) against a running `pipes serve`, and
prints what the SDK parsed as one JSON document on stdout.

Environment: PIPES_URL, PIPES_API_KEY, PIPES_SLUG, and PIPES_OWNERS: a JSON
list of {"user_id", "organization_id"?} to read.
"""

import json
import os
from datetime import datetime

from workos import WorkOSClient

client = WorkOSClient(api_key=os.environ["PIPES_API_KEY"], base_url=os.environ["PIPES_URL"], max_retries=0)
slug = os.environ["PIPES_SLUG"]


def value(v):
    return getattr(v, "value", v)


results = []
for owner in json.loads(os.environ["PIPES_OWNERS"]):
    org = owner.get("organization_id")
    extra = {"organization_id": org} if org is not None else {}
    token = client.pipes.get_access_token(slug, user_id=owner["user_id"], **extra)
    credential = client.pipes.create_data_integration_credential(slug, user_id=owner["user_id"], **extra)
    at = token.access_token
    cred = getattr(credential, "credential", None)
    results.append(
        {
            "active": token.active is True,
            "error": value(token.error),
            "access_token": at.access_token if at else None,
            "expires_at": at.expires_at.isoformat() if at and at.expires_at else None,
            "expires_at_is_datetime": isinstance(at.expires_at, datetime) if at else None,
            "scopes": at.scopes if at else None,
            "missing_scopes": at.missing_scopes if at else None,
            "credential_active": value(credential.active) is True,
            "credential_value": getattr(cred, "value", None) if cred else None,
            "credential_error": value(getattr(credential, "error", None)),
        }
    )
print(json.dumps(results))
