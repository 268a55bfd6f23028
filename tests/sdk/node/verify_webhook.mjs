// Verifies one webhook delivery with the official WorkOS Node SDK, as a
// receiver would: `webhooks.constructEvent` checks the WorkOS-Signature
// header and parses the event.
// stdin: {"payload": "<raw body>", "sigHeader": "<WorkOS-Signature>", "secret": "whsec_…"}
// stdout: the event as the SDK returns it; exit 1 when verification fails.
import { WorkOS } from '@workos-inc/node';

let input = '';
for await (const chunk of process.stdin) input += chunk;
const { payload, sigHeader, secret } = JSON.parse(input);

const workos = new WorkOS('sk_test_unused');
try {
  const event = await workos.webhooks.constructEvent({ payload, sigHeader, secret });
  process.stdout.write(JSON.stringify(event));
} catch (error) {
  process.stderr.write(`verification failed: ${error.message}\n`);
  process.exit(1);
}
