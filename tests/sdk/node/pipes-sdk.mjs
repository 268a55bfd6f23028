// Drives a running Pipes server with the official, unmodified WorkOS Node SDK
// (@workos-inc/node 11.0.0, installed as workos-node-11: a smoke test of the older
// release; pipes-sdk-12.mjs drives 12.3.0), pointed at it with apiHostname/port/https:false.
// Inputs come from the environment (set by tests/it/sdk_node.rs); any failed
// check throws, so the exit code tells the Rust test the outcome.

import assert from 'node:assert/strict';
import { WorkOS, NotFoundException, ConflictException } from 'workos-node-11';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const slug = env('PIPES_SDK_SLUG');
const demo = env('PIPES_SDK_DEMO_URL');
const returnTo = env('PIPES_SDK_RETURN_TO');
const workos = new WorkOS(env('PIPES_SDK_API_KEY'), {
  apiHostname: env('PIPES_SDK_HOST'),
  port: Number(env('PIPES_SDK_PORT')),
  https: false,
  maxRetries: 0,
});
const user = { userId: 'user_sdk', organizationId: 'org_sdk' };

// createDataIntegration with a customProvider.
const integration = await workos.pipes.createDataIntegration({
  provider: slug,
  description: 'Created by the Node SDK',
  enabled: true,
  scopes: ['read', 'write'],
  credentials: { type: 'custom', clientId: env('PIPES_SDK_CLIENT_ID'), clientSecret: env('PIPES_SDK_CLIENT_SECRET') },
  customProvider: {
    name: 'Demo via SDK',
    authorizationUrl: `${demo}/authorize`,
    tokenUrl: `${demo}/token`,
    pkceEnabled: true,
    requestScopeSeparator: ' ',
    tokenBodyContentType: 'application/x-www-form-urlencoded',
    authenticateVia: 'basic_auth_header',
  },
});
assert.equal(integration.object, 'data_integration');
assert.equal(integration.slug, slug);
assert.ok(integration.id.startsWith('data_integration_'));
assert.equal(integration.customProvider.authenticateVia, 'basic_auth_header');
assert.equal(integration.customProvider.pkceEnabled, true);
assert.equal(integration.credentials.clientId, env('PIPES_SDK_CLIENT_ID'));
assert.ok(!JSON.stringify(integration).includes(env('PIPES_SDK_CLIENT_SECRET')), 'the secret is never returned');
assert.ok(integration.createdAt instanceof Date && !Number.isNaN(integration.createdAt.getTime()));

const listed = await workos.pipes.listDataIntegrations({ limit: 10 });
assert.ok(listed.data.some((i) => i.slug === slug));

// authorizeDataIntegration, then the browser's part: the confirmation page, the provider
// (auto-consent) redirects to the callback, which redirects to returnTo.
// The confirmation page comes first: continuing sets the cookie the callback requires.
const { url } = await workos.pipes.authorizeDataIntegration({ slug, ...user, returnTo });
const go = await fetch(url, { method: 'POST', redirect: 'manual' });
assert.equal(go.status, 303);
const cookie = go.headers.get('set-cookie').split(';')[0];
const consent = await fetch(go.headers.get('location'), { redirect: 'manual' });
assert.equal(consent.status, 302);
const done = await fetch(consent.headers.get('location'), { redirect: 'manual', headers: { cookie } });
assert.equal(done.status, 302);
const back = new URL(done.headers.get('location'));
assert.equal(back.searchParams.get('status'), 'connected');
assert.equal(back.searchParams.get('provider'), slug);

// getUserConnectedAccount (organizationId travels as ?organization_id=).
const account = await workos.pipes.getUserConnectedAccount({ slug, ...user });
assert.equal(account.object, 'connected_account');
assert.equal(account.state, 'connected');
assert.equal(account.userId, 'user_sdk');
assert.equal(account.organizationId, 'org_sdk');
assert.deepEqual(account.scopes, ['read', 'write']);
assert.equal(account.authMethod, 'oauth');

// listUserDataProviders.
const providers = await workos.pipes.listUserDataProviders(user);
assert.equal(providers.object, 'list');
const mine = providers.data.find((p) => p.slug === slug);
assert.ok(mine, 'the integration is listed');
assert.equal(mine.credentialsType, 'oauth2');
assert.equal(mine.connectedAccount.id, account.id);

// createUserConnectedAccount (import), then 409 for a second import.
const imported = await workos.pipes.createUserConnectedAccount({
  userId: 'user_imported',
  slug,
  accessToken: 'imported-access-token',
  refreshToken: 'imported-refresh-token',
  expiresAt: new Date(Date.now() + 3600 * 1000),
  scopes: ['read'],
});
assert.equal(imported.state, 'connected');
assert.equal(imported.organizationId, null);
await assert.rejects(
  workos.pipes.createUserConnectedAccount({ userId: 'user_imported', slug, accessToken: 'again' }),
  (err) => err instanceof ConflictException,
);

// deleteUserConnectedAccount, after which the account is gone.
await workos.pipes.deleteUserConnectedAccount({ slug, ...user });
await assert.rejects(workos.pipes.getUserConnectedAccount({ slug, ...user }), (err) => err instanceof NotFoundException);
const after = await workos.pipes.listUserDataProviders(user);
assert.equal(after.data.find((p) => p.slug === slug).connectedAccount, null);

console.log(JSON.stringify({ ok: true, integration: integration.id, account: account.id, imported: imported.id }));
