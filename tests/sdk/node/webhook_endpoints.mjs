// Drives the webhook endpoint and events routes with the official WorkOS Node
// SDK, as an application would, and prints what the SDK parsed.
// stdin: {"apiKey": "...", "port": 1234}
import { WorkOS } from '@workos-inc/node';

let input = '';
for await (const chunk of process.stdin) input += chunk;
const { apiKey, port } = JSON.parse(input);
const workos = new WorkOS(apiKey, { apiHostname: '127.0.0.1', port, https: false });

const created = await workos.webhooks.createWebhookEndpoint({
  endpointUrl: 'https://hooks.example.com/pipes',
  events: ['pipes.connected_account.connected', 'pipes.connected_account.reauthorization_needed'],
});
const listed = await workos.webhooks.listWebhookEndpoints({ limit: 10 });
const updated = await workos.webhooks.updateWebhookEndpoint({ id: created.id, status: 'disabled' });
const events = await workos.events.listEvents({
  events: ['pipes.connected_account.connected', 'pipes.connected_account.disconnected'],
  limit: 5,
});
await workos.webhooks.deleteWebhookEndpoint({ id: created.id });
const afterDelete = await workos.webhooks.listWebhookEndpoints();
process.stdout.write(JSON.stringify({ created, listed: listed.data, updated, events, afterDelete: afterDelete.data }));
