// Drives a running Pipes server with the official, unmodified WorkOS Node SDK
// (@workos-inc/node 12.3.0): every one of its 26 Pipes methods, with the
// parameters of connection sharing and multiple connections. Inputs come from the
// environment (set by tests/it/sdk_node.rs); any failed check throws, so the exit
// code tells the Rust test the outcome. Each method is named in a `method(...)`
// line, so the Rust test can tell every one was called.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  WorkOS,
  GenericServerException,
  NotFoundException,
  ConflictException,
  UnprocessableEntityException,
} from '@workos-inc/node';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const slug = env('PIPES_SDK_SLUG');
const demo = env('PIPES_SDK_DEMO_URL');
const returnTo = env('PIPES_SDK_RETURN_TO');
// Registered in PIPES_RETURN_URLS: where a session-bound flow comes back.
const boundReturnTo = env('PIPES_SDK_BOUND_RETURN_TO');
const base = `http://${env('PIPES_SDK_HOST')}:${env('PIPES_SDK_PORT')}`;
const apiKey = env('PIPES_SDK_API_KEY');
const workos = new WorkOS(apiKey, {
  apiHostname: env('PIPES_SDK_HOST'),
  port: Number(env('PIPES_SDK_PORT')),
  https: false,
  maxRetries: 0,
});
const pipes = workos.pipes;
const called = new Set();
const method = (name) => called.add(name);
const org = 'org_sdk12';
const user = { userId: 'user_sdk12', organizationId: org };
const rejects = (promise, kind, code) =>
  assert.rejects(promise, (err) => {
    assert.ok(err instanceof kind, `${err?.constructor?.name}: ${err?.message}`);
    if (code) assert.equal(err.code, code);
    return true;
  });

// A 422 whose field errors include `code` (the SDK lists them in the message).
const refused = (promise, code) =>
  assert.rejects(promise, (err) => {
    assert.ok(err instanceof UnprocessableEntityException, `${err?.constructor?.name}: ${err?.message}`);
    assert.ok(err.message.includes(code), err.message);
    return true;
  });

// The person's part, as a browser: the confirmation page (continue, keeping its cookie),
// the provider's (auto-consent) redirect and the callback's, to return_to.
const consent = async (url) => {
  let cookie = null;
  if (url.startsWith(`${base}/connect/`)) {
    assert.equal((await fetch(url)).status, 200);
    const go = await fetch(url, { method: 'POST', redirect: 'manual', headers: { origin: base } });
    assert.equal(go.status, 303);
    cookie = go.headers.get('set-cookie').split(';')[0];
    url = go.headers.get('location');
  }
  const provider = await fetch(url, { redirect: 'manual' });
  assert.equal(provider.status, 302);
  const headers = cookie ? { cookie } : {};
  const done = await fetch(provider.headers.get('location'), { redirect: 'manual', headers });
  assert.equal(done.status, 302);
  return new URL(done.headers.get('location'));
};

// --- Integrations: both roots of one provider.
const customProvider = {
  name: 'Demo via SDK 12',
  authorizationUrl: `${demo}/authorize`,
  tokenUrl: `${demo}/token`,
  pkceEnabled: true,
  requestScopeSeparator: ' ',
  authenticateVia: 'basic_auth_header',
};
const credentials = { type: 'custom', clientId: env('PIPES_SDK_CLIENT_ID'), clientSecret: env('PIPES_SDK_CLIENT_SECRET') };
method('createDataIntegration');
const userRoot = await pipes.createDataIntegration({
  provider: slug,
  description: 'User-owned',
  enabled: true,
  scopes: ['read', 'write'],
  credentials,
  customProvider,
});
assert.equal(userRoot.ownership, 'user');
assert.ok(!JSON.stringify(userRoot).includes(env('PIPES_SDK_CLIENT_SECRET')), 'the secret is never returned');
const orgRoot = await pipes.createDataIntegration({
  provider: slug,
  ownership: 'organization',
  enabled: true,
  scopes: ['read', 'write'],
  credentials,
  customProvider,
});
assert.equal(orgRoot.ownership, 'organization');
assert.notEqual(orgRoot.id, userRoot.id);

method('listDataIntegrations');
const onlyOrg = await pipes.listDataIntegrations({ ownership: 'organization' });
assert.deepEqual(onlyOrg.data.map((i) => i.id), [orgRoot.id]);
const ascending = await pipes.listDataIntegrations({ order: 'asc' });
assert.deepEqual(ascending.data.map((i) => i.id), [userRoot.id, orgRoot.id]);
const all = await ascending.autoPagination();
assert.deepEqual(all.map((i) => i.id), [userRoot.id, orgRoot.id]);

method('getDataIntegration');
assert.equal((await pipes.getDataIntegration({ slug })).id, userRoot.id);
method('updateDataIntegration');
assert.equal((await pipes.updateDataIntegration({ slug, description: 'Edited' })).description, 'Edited');
method('getOrganizationDataIntegration');
assert.equal((await pipes.getOrganizationDataIntegration({ slug })).id, orgRoot.id);
method('updateOrganizationDataIntegration');
const orgEdited = await pipes.updateOrganizationDataIntegration({ slug, description: 'Shared' });
assert.equal(orgEdited.description, 'Shared');
assert.equal((await pipes.getDataIntegration({ slug })).description, 'Edited', 'the user root is untouched');

// Several accounts per owner are a Pipes setting (the SDK has no field for it).
const allow = await fetch(`${base}/data-integrations/${slug}`, {
  method: 'PUT',
  headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
  body: JSON.stringify({ multiple_connections: true }),
});
assert.equal(allow.status, 200);

// --- Connect: the user's account, another one beside it, the organization's.
method('authorizeDataIntegration');
const first = await pipes.authorizeDataIntegration({ slug, ...user, returnTo });
assert.ok(first.state.length > 20, 'the answer names the flow state');
const back = await consent(first.url);
assert.equal(back.searchParams.get('status'), 'connected');
assert.equal(back.searchParams.get('state'), first.state);
const second = await pipes.authorizeDataIntegration({
  slug,
  ...user,
  returnTo,
  connectionIntent: 'add',
  accountDisplayName: 'Second',
});
assert.equal((await consent(second.url)).searchParams.get('status'), 'connected');
const shared = await pipes.authorizeDataIntegration({
  slug,
  userId: 'admin_sdk12',
  organizationId: org,
  connectionOwner: 'organization',
  returnTo,
});
assert.equal((await consent(shared.url)).searchParams.get('status'), 'connected');
await rejects(
  pipes.authorizeDataIntegration({ slug, ...user, codeChallenge: 'x'.repeat(43), codeChallengeMethod: 'plain' }),
  UnprocessableEntityException,
);

// --- Session binding: the callback saves nothing; finishConnection with the verifier does.
const verifier = randomBytes(32).toString('base64url');
const codeChallenge = createHash('sha256').update(verifier).digest('base64url');
const boundUser = { userId: 'user_bound_sdk12' };
const bound = await pipes.authorizeDataIntegration({
  slug,
  ...boundUser,
  returnTo: boundReturnTo,
  codeChallenge,
  codeChallengeMethod: 'S256',
  accountDisplayName: 'Bound',
});
assert.ok(bound.url.startsWith(demo), 'no confirmation screen with a code challenge');
assert.equal(bound.completion, 'finish_required');
const handed = await consent(bound.url);
assert.equal(`${handed.origin}${handed.pathname}`, boundReturnTo);
assert.equal(handed.searchParams.get('state'), bound.state);
const connectCode = handed.searchParams.get('connect_code');
assert.ok(connectCode, 'return_to gets a connect_code');
await rejects(pipes.getUserConnectedAccount({ slug, ...boundUser }), NotFoundException);
method('finishConnection');
const finished = await pipes.finishConnection({ connectCode, codeVerifier: verifier, state: bound.state });
assert.equal(finished.connectedAccount.userId, boundUser.userId);
assert.equal(finished.connectedAccount.accountDisplayName, 'Bound');
assert.equal(finished.connectedAccount.state, 'connected');
// A 400 with a code (and no field errors) reaches the SDK's caller as GenericServerException.
const badRequest = (code) => (err) => {
  assert.ok(err instanceof GenericServerException, `${err?.constructor?.name}: ${err?.message}`);
  assert.equal(err.status, 400);
  assert.equal(err.rawData.code, code);
  return true;
};
await assert.rejects(pipes.finishConnection({ connectCode, codeVerifier: verifier }), badRequest('invalid_connect_code'));
assert.equal((await pipes.getUserConnectedAccount({ slug, ...boundUser })).id, finished.connectedAccount.id);

// --- The user's accounts.
method('getUserConnectedAccount');
const compatibility = await pipes.getUserConnectedAccount({ slug, ...user });
assert.equal(compatibility.connectionRole, 'compatibility');
assert.equal(compatibility.userId, user.userId);
await rejects(
  pipes.getUserConnectedAccount({ slug, ...user, supportsMultipleConnections: true }),
  ConflictException,
  'account_selection_required',
);
method('listUserDataProviders');
const providers = await pipes.listUserDataProviders({ ...user, supportsMultipleConnections: true });
const row = providers.data.find((p) => p.slug === slug);
assert.equal(row.connectedAccount.id, compatibility.id);
assert.equal(row.connectedAccounts.length, 2);
const standard = row.connectedAccounts.find((a) => a.connectionRole === 'standard');
assert.equal(standard.accountDisplayName, 'Second');
const plain = await pipes.listUserDataProviders(user);
assert.equal(plain.data.find((p) => p.slug === slug).connectedAccounts.length, 1, 'only the compatibility one');
const named = await pipes.getUserConnectedAccount({ slug, ...user, connectedAccountId: standard.id });
assert.equal(named.id, standard.id);

// --- Token reads.
method('getAccessToken');
const token = await pipes.getAccessToken({ provider: slug, ...user });
assert.equal(token.active, true);
const other = await pipes.getAccessToken({ provider: slug, ...user, connectedAccountId: standard.id });
assert.notEqual(other.accessToken.accessToken, token.accessToken.accessToken);
await rejects(
  pipes.getAccessToken({ provider: slug, ...user, supportsMultipleConnections: true }),
  ConflictException,
  'account_selection_required',
);
await rejects(
  pipes.getAccessToken({ provider: slug, userId: 'someone_else', connectedAccountId: standard.id }),
  NotFoundException,
  'connected_account_not_found',
);
const sharedToken = await pipes.getAccessToken({
  provider: slug,
  userId: 'member_sdk12',
  organizationId: org,
  connectionOwner: 'organization',
});
assert.equal(sharedToken.active, true);
assert.notEqual(sharedToken.accessToken.accessToken, token.accessToken.accessToken);
method('createDataIntegrationCredential');
const credential = await pipes.createDataIntegrationCredential({ slug, ...user, connectedAccountId: standard.id });
assert.equal(credential.active, true);
assert.equal(credential.credential.authMethod, 'oauth');
assert.equal(credential.credential.value, other.accessToken.accessToken);

// --- The organization's accounts.
method('getOrganizationConnectedAccount');
const orgAccount = await pipes.getOrganizationConnectedAccount({ organizationId: org, slug });
assert.equal(orgAccount.userId, null);
assert.equal(orgAccount.establishedByUserId, 'admin_sdk12');
method('listOrganizationDataProviders');
const orgProviders = await pipes.listOrganizationDataProviders({ organizationId: org });
assert.deepEqual(orgProviders.data.map((p) => p.connectedAccount?.id), [orgAccount.id]);
method('updateOrganizationConnectedAccount');
const orgReplaced = await pipes.updateOrganizationConnectedAccount({
  organizationId: org,
  slug,
  userId: 'admin2_sdk12',
  accessToken: 'org-replaced',
});
assert.equal(orgReplaced.id, orgAccount.id);
assert.equal(orgReplaced.establishedByUserId, 'admin2_sdk12');
const afterReplace = await pipes.getAccessToken({
  provider: slug,
  userId: 'member_sdk12',
  organizationId: org,
  connectionOwner: 'organization',
});
assert.equal(afterReplace.accessToken.accessToken, 'org-replaced');
method('createOrganizationConnectedAccount');
const otherOrg = await pipes.createOrganizationConnectedAccount({
  organizationId: 'org_other',
  slug,
  userId: 'admin_other',
  accessToken: 'other-org-token',
});
assert.equal(otherOrg.organizationId, 'org_other');
method('deleteOrganizationConnectedAccount');
await pipes.deleteOrganizationConnectedAccount({ organizationId: 'org_other', slug });
await rejects(pipes.getOrganizationConnectedAccount({ organizationId: 'org_other', slug }), NotFoundException);

// --- Imports and several accounts for one user.
method('createUserConnectedAccount');
const imported = await pipes.createUserConnectedAccount({
  userId: 'user_imported',
  slug,
  accessToken: 'imported-1',
  refreshToken: 'imported-refresh',
  expiresAt: new Date(Date.now() + 3600 * 1000),
  scopes: ['read'],
  accountIdentifier: 'alice@example.com',
  accountDisplayName: 'Work',
});
assert.equal(imported.accountIdentifier, 'alice@example.com');
await rejects(pipes.createUserConnectedAccount({ userId: 'user_imported', slug, accessToken: 'again' }), ConflictException);
const added = await pipes.createUserConnectedAccount({
  userId: 'user_imported',
  slug,
  accessToken: 'imported-2',
  connectionIntent: 'add',
  accountIdentifier: 'bob@example.com',
  accountDisplayName: 'Work',
});
assert.equal(added.connectionRole, 'standard');
assert.equal(added.warnings?.[0]?.code, 'duplicate_account_display_name');
method('updateUserConnectedAccount');
const renewed = await pipes.updateUserConnectedAccount({
  userId: 'user_imported',
  slug,
  connectedAccountId: added.id,
  connectionIntent: 'reauthorize',
  accessToken: 'imported-2b',
});
assert.equal(renewed.id, added.id);
method('deleteUserConnectedAccount');
await pipes.deleteUserConnectedAccount({ userId: 'user_imported', slug, connectedAccountId: added.id });
await rejects(
  pipes.getUserConnectedAccount({ userId: 'user_imported', slug, connectedAccountId: added.id }),
  NotFoundException,
);
assert.equal((await pipes.getUserConnectedAccount({ userId: 'user_imported', slug })).id, imported.id);

// --- API-key and client-credentials integrations. The fake provider knows the keys
// apikey_sdk_alpha_0123456789 and apikey_sdk_bravo_0123456789 and the client sdk-machine.
// An OAuth integration takes neither.
await refused(
  pipes.createDataIntegrationApiKey({ slug, ...user, secret: 'apikey_sdk_alpha_0123456789', connectionIntent: 'add' }),
  'auth_method_mismatch',
);
await refused(pipes.updateDataIntegrationClientCredentials({ slug, ...user, clientId: 'c', clientSecret: 's' }), 'auth_method_mismatch');
// Where an API-key provider's keys go is Pipes' own `custom_provider.api_key`, which the
// SDK's serializer does not carry: the provider is defined over plain HTTP.
const keyed = `${slug}-keyed`;
const defined = await fetch(`${base}/data-integrations`, {
  method: 'POST',
  headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
  body: JSON.stringify({
    provider: keyed,
    auth_methods: ['api_key'],
    enabled: true,
    custom_provider: {
      name: 'Keyed',
      api_key: { placement: 'header', header: 'Authorization', format: 'Bearer {api_key}', verify: { method: 'GET', url: `${demo}/api/me` } },
    },
  }),
});
assert.equal(defined.status, 201);
assert.deepEqual((await pipes.getDataIntegration({ slug: keyed })).authMethods, ['api_key']);
method('updateDataIntegrationApiKey');
const keyAccount = await pipes.updateDataIntegrationApiKey({
  slug: keyed,
  ...user,
  secret: 'apikey_sdk_alpha_0123456789',
  accountDisplayName: 'Alpha key',
});
assert.equal(keyAccount.authMethod, 'api_key');
assert.equal(keyAccount.apiKeyLast4, '6789');
assert.equal(keyAccount.connectionRole, 'compatibility');
const keyRead = await pipes.createDataIntegrationCredential({ slug: keyed, ...user });
assert.deepEqual(keyRead, {
  active: true,
  credential: { authMethod: 'api_key', object: 'credential', value: 'apikey_sdk_alpha_0123456789', config: {} },
});
const keyToken = await pipes.getAccessToken({ provider: keyed, ...user });
assert.equal(keyToken.accessToken.accessToken, 'apikey_sdk_alpha_0123456789');
assert.equal(keyToken.accessToken.expiresAt, null);
const rotatedKey = await pipes.updateDataIntegrationApiKey({
  slug: keyed,
  ...user,
  connectedAccountId: keyAccount.id,
  connectionIntent: 'reauthorize',
  secret: 'apikey_sdk_bravo_0123456789',
});
assert.equal(rotatedKey.id, keyAccount.id);
assert.equal(rotatedKey.accountDisplayName, 'Alpha key');
assert.equal((await pipes.createDataIntegrationCredential({ slug: keyed, ...user })).credential.value, 'apikey_sdk_bravo_0123456789');
await refused(pipes.updateDataIntegrationApiKey({ slug: keyed, ...user, secret: 'sk_refused_0123456789' }), 'invalid_api_key');
method('createDataIntegrationApiKey');
const addedKey = await pipes.createDataIntegrationApiKey({
  slug: keyed,
  userId: 'user_keyed',
  secret: 'apikey_sdk_alpha_0123456789',
  connectionIntent: 'add',
});
assert.equal(addedKey.connectionRole, 'compatibility');
await rejects(
  pipes.createDataIntegrationApiKey({ slug: keyed, userId: 'user_keyed', secret: 'apikey_sdk_alpha_0123456789', connectionIntent: 'add' }),
  NotFoundException,
  'multiple_connections_unavailable',
);

const machine = await pipes.createDataIntegration({
  provider: `${slug}-machine`,
  authMethods: ['client_credentials'],
  enabled: true,
  scopes: ['read'],
  customProvider: { name: 'Machine', authorizationUrl: `${demo}/authorize`, tokenUrl: `${demo}/token`, authenticateVia: 'basic_auth_header' },
});
assert.deepEqual(machine.authMethods, ['client_credentials']);
assert.equal(machine.credentials, null);
method('createDataIntegrationClientCredential');
const machineAccount = await pipes.createDataIntegrationClientCredential({
  slug: machine.slug,
  ...user,
  clientId: 'sdk-machine',
  clientSecret: 'ccsecret_sdk_0123456789',
  config: { region: 'eu' },
  connectionIntent: 'add',
});
assert.equal(machineAccount.authMethod, 'client_credentials');
assert.equal(machineAccount.clientId, 'sdk-machine');
assert.equal(machineAccount.clientSecretLast4, '6789');
const machineRead = await pipes.createDataIntegrationCredential({ slug: machine.slug, ...user });
assert.equal(machineRead.credential.authMethod, 'client_credentials');
assert.ok(machineRead.credential.expiresAt instanceof Date);
assert.deepEqual(machineRead.credential.scopes, ['read']);
assert.deepEqual(machineRead.credential.metadata, {});
assert.deepEqual(machineRead.credential.config, { region: 'eu' });
method('updateDataIntegrationClientCredentials');
const machineRotated = await pipes.updateDataIntegrationClientCredentials({
  slug: machine.slug,
  ...user,
  clientId: 'sdk-machine',
  clientSecret: 'ccsecret_sdk_0123456789',
});
assert.equal(machineRotated.id, machineAccount.id);
await refused(
  pipes.updateDataIntegrationClientCredentials({ slug: machine.slug, ...user, clientId: 'sdk-machine', clientSecret: 'ccsecret_refused_0123456789' }),
  'invalid_client_credentials',
);
await pipes.deleteDataIntegration({ slug: keyed });
await pipes.deleteDataIntegration({ slug: machine.slug });
await assert.rejects(pipes.finishConnection({ connectCode: 'x', codeVerifier: 'y'.repeat(43) }), badRequest('invalid_connect_code'));

// --- Deleting both roots.
method('deleteOrganizationDataIntegration');
await pipes.deleteOrganizationDataIntegration({ slug });
await rejects(pipes.getOrganizationDataIntegration({ slug }), NotFoundException);
method('deleteDataIntegration');
await pipes.deleteDataIntegration({ slug });
await rejects(pipes.getDataIntegration({ slug }), NotFoundException);

console.log(JSON.stringify({ ok: true, methods: [...called].sort() }));
