// Reads tokens through the official Node SDK (`workos.pipes.getAccessToken`
// and `createDataIntegrationCredential`) against a running `pipes serve`, and
// prints what the SDK parsed as one JSON document on stdout.
//
// Environment: PIPES_URL (http://host:port), PIPES_API_KEY, PIPES_SLUG, and
// PIPES_OWNERS: a JSON list of {"user_id", "organization_id"?} to read.
import { WorkOS } from '@workos-inc/node';

const url = new URL(process.env.PIPES_URL);
const workos = new WorkOS(process.env.PIPES_API_KEY, {
  apiHostname: url.hostname,
  port: Number(url.port),
  https: false,
});
const provider = process.env.PIPES_SLUG;
const owners = JSON.parse(process.env.PIPES_OWNERS);

const results = [];
for (const owner of owners) {
  const options = { userId: owner.user_id, organizationId: owner.organization_id ?? undefined };
  const token = await workos.pipes.getAccessToken({ provider, ...options });
  const credential = await workos.pipes.createDataIntegrationCredential({ slug: provider, ...options });
  results.push({
    active: token.active,
    error: token.active ? null : token.error,
    access_token: token.active ? token.accessToken.accessToken : null,
    // The SDK turns expires_at into a Date: print it back as ISO text.
    expires_at: token.active && token.accessToken.expiresAt ? token.accessToken.expiresAt.toISOString() : null,
    expires_at_is_date: token.active ? token.accessToken.expiresAt instanceof Date : null,
    scopes: token.active ? token.accessToken.scopes : null,
    missing_scopes: token.active ? token.accessToken.missingScopes : null,
    credential_active: credential.active,
    credential_value: credential.active ? credential.credential.value : null,
    credential_error: credential.active ? null : credential.error,
  });
}
process.stdout.write(JSON.stringify(results));
