// A small OpenID provider for the tests: node-oidc-provider (the certified implementation)
// over plain HTTP on 127.0.0.1, with one confidential client, the authorization code flow with
// PKCE (S256) required, scopes `openid email`, and a login page that takes any login (no
// password) and consents on its own.
//
// Environment: PORT, ISSUER (http://127.0.0.1:PORT), CLIENT_ID, CLIENT_SECRET, REDIRECT_URI;
// optional ID_TOKEN_CLAIMS=1 to put `email` and `email_verified` in the ID token too (by
// default, as the spec has it when an access token is issued, they come from userinfo only),
// optional ALWAYS_LOGIN=1 to show the login form even to a browser already signed in here.
// Prints `ready` on stdout once it listens.
//
// The account for login `X` has sub `X`, email `X` in lower case, and email_verified unless `X`
// starts with `unverified`.
//
// Steps for an HTTP client without JavaScript, following no redirect by itself and keeping the
// provider's cookies by hand (each comes with a `.sig` companion that must be sent with it):
//  1. GET  the authorization URL -> 303 Location /interaction/{uid} (relative)
//       Set-Cookie: _interaction, _interaction.sig (path /interaction/{uid});
//                   _interaction_resume, _interaction_resume.sig (path /auth/{uid})
//  2. GET  /interaction/{uid} with Cookie: _interaction, _interaction.sig
//       -> 200, the login form: <form method="post" action="/interaction/{uid}/login">,
//          one field `login`
//  3. POST /interaction/{uid}/login with the same cookies,
//       application/x-www-form-urlencoded body login=ann@example.com
//       -> 303 Location {ISSUER}/auth/{uid} (absolute)
//  4. GET  /auth/{uid} with Cookie: _interaction_resume, _interaction_resume.sig
//       -> 303 Location REDIRECT_URI?code=...&state=...&iss=...
//       Set-Cookie: _session, _session.sig (path /): a client that keeps them and comes back
//       skips steps 2 and 3 (unless ALWAYS_LOGIN=1), as a browser does.

import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';

import Provider, { interactionPolicy } from 'oidc-provider';

function env(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`provider.mjs: ${name} must be set`);
    process.exit(2);
  }
  return value;
}

const port = Number(env('PORT'));
const issuer = env('ISSUER');
const clientId = env('CLIENT_ID');
const clientSecret = env('CLIENT_SECRET');
const redirectUri = env('REDIRECT_URI');
const idTokenClaims = process.env.ID_TOKEN_CLAIMS === '1';
const alwaysLogin = process.env.ALWAYS_LOGIN === '1';

// The signing key: a fresh RSA key for each start, published at jwks_uri. ID tokens are RS256.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };

// By default a browser that signed in once is signed in again without the form (the `_session`
// cookie), as with a real provider. ALWAYS_LOGIN=1 shows the form at every authorization
// request, e.g. to sign in as another user in the same browser.
const policy = interactionPolicy.base();
if (alwaysLogin) {
  policy.get('login').checks.add(new interactionPolicy.Check(
    'always_login',
    'the test provider asks for a login at every authorization request',
    (ctx) => (ctx.oidc.result?.login ? interactionPolicy.Check.NO_NEED_TO_PROMPT : interactionPolicy.Check.REQUEST_PROMPT),
  ));
}

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: [redirectUri],
    response_types: ['code'],
    grant_types: ['authorization_code'],
    // Registered as basic; oidc-provider takes client_secret_post from such a client too.
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
  }],
  jwks: { keys: [jwk] },
  scopes: ['openid', 'email'],
  responseTypes: ['code'],
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  conformIdTokenClaims: !idTokenClaims,
  pkce: { required: () => true },
  // Set, so the library does not warn that it uses its defaults (seconds).
  ttl: {
    AuthorizationCode: 60, AccessToken: 3600, IdToken: 3600, Grant: 3600, Interaction: 3600, Session: 3600,
  },
  features: {
    devInteractions: { enabled: false },
    // Everything else stays off: discovery, jwks, authorization, token and userinfo remain.
    revocation: { enabled: false },
    introspection: { enabled: false },
  },
  interactions: { policy, url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: {
    keys: ['linkpulse-tests-only-cookie-key'],
    long: { httpOnly: true, sameSite: 'lax', secure: false },
    short: { httpOnly: true, sameSite: 'lax', secure: false },
  },
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: id.toLowerCase(),
          email_verified: !id.startsWith('unverified'),
        };
      },
    };
  },
  renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><title>error</title><pre>${escape(JSON.stringify(out, null, 2))}</pre>`;
  },
});

provider.on('server_error', (_ctx, err) => console.error('provider server_error', err));

function page(res, status, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(`<!DOCTYPE html><html><head><meta charset="utf-8"><title>Test provider</title></head><body>${body}</body></html>`);
}

function readForm(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (chunk) => {
      data += chunk;
      if (data.length > 64 * 1024) reject(new Error('form too large'));
    });
    req.on('end', () => resolve(new URLSearchParams(data)));
    req.on('error', reject);
  });
}

// The interaction pages: a login form, and on its submission login plus consent at once.
async function interaction(req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    return page(res, 400, `<p>interaction not found: ${escape(err.message)}</p>`);
  }
  if (details.uid !== uid) return page(res, 400, '<p>interaction mismatch</p>');
  const { prompt, params } = details;

  if (req.method === 'GET' && action === undefined) {
    return page(res, 200, `<h1>Sign in to the test provider</h1>
<p>prompt: ${escape(prompt.name)}, client: ${escape(params.client_id)}</p>
<form method="post" action="/interaction/${escape(uid)}/login">
  <input type="text" name="login" autofocus required placeholder="any login, e.g. ann@example.com">
  <button type="submit">Sign in</button>
</form>`);
  }

  if (req.method === 'POST' && action === 'login') {
    const form = await readForm(req);
    const login = (form.get('login') || '').trim();
    if (!login) return page(res, 400, '<p>login is required</p>');
    const grant = new provider.Grant({ accountId: login, clientId: params.client_id });
    grant.addOIDCScope(String(params.scope || 'openid'));
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, {
      login: { accountId: login },
      consent: { grantId },
    }, { mergeWithLastSubmission: false });
  }

  return page(res, 405, '<p>method not allowed</p>');
}

const callback = provider.callback();
const server = createServer((req, res) => {
  const path = new URL(req.url, issuer).pathname;
  const m = /^\/interaction\/([^/]+)(?:\/(login))?$/.exec(path);
  if (m) {
    interaction(req, res, m[1], m[2]).catch((err) => {
      console.error('interaction error', err);
      if (!res.headersSent) page(res, 500, `<p>${escape(err.message)}</p>`);
      else res.end();
    });
    return;
  }
  callback(req, res);
});

server.listen(port, '127.0.0.1', () => {
  console.log('ready');
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => process.exit(0));
}
