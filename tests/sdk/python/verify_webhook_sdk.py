"""Verifies one webhook delivery with the official Python SDK (`workos` 10.8), as a
receiver would: `webhooks.verify_event` checks the WorkOS-Signature header and parses
the event into the SDK's own model (strict: a missing key raises).
stdin: {"payload": "<raw body>", "sigHeader": "<WorkOS-Signature>", "secret": "whsec_..."}
stdout: {"event": <its name>, "id": <its id>}; exit 1 when verification fails.
"""

import json
import sys

from workos import WorkOSClient

given = json.load(sys.stdin)
client = WorkOSClient(api_key="sk_test_unused", client_id="client_unused")
try:
    event = client.webhooks.verify_event(
        event_body=given["payload"], event_signature=given["sigHeader"], secret=given["secret"]
    )
except Exception as err:  # noqa: BLE001 - any refusal is a failed verification
    sys.stderr.write(f"verification failed: {type(err).__name__}: {err}\n")
    sys.exit(1)
name = getattr(event, "event", None)
print(json.dumps({"event": getattr(name, "value", name), "id": getattr(event, "id", None)}))
