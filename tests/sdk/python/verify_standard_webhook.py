"""Verifies one webhook delivery with the Standard Webhooks reference library.

stdin: {"payload": "<raw body>", "headers": {"webhook-id": ..., ...}, "secret": "whsec_..."}
stdout: the verified JSON payload; exit 1 when verification fails.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

request = json.load(sys.stdin)
try:
    verified = Webhook(request["secret"]).verify(request["payload"], request["headers"])
except WebhookVerificationError as error:
    print(f"verification failed: {error}", file=sys.stderr)
    sys.exit(1)
print(json.dumps(verified))
