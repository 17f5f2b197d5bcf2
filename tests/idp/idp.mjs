// Test OpenID Provider for tailpass's integration tests.
//
//   node tests/idp/idp.mjs '<json config>'
//
// A real, certified OpenID Provider (the `oidc-provider` package) on
// 127.0.0.1, with its own small interactions (no devInteractions), an
// enumerable in-memory store, and plain-JSON test-control endpoints under
// /test/. Prints exactly one line to stdout once listening:
//   {"ready":true,"issuer":"...","port":N}
// and exits when its stdin closes, so it never outlives the test process.
// Everything else (notices, warnings, errors) goes to stderr.
//
// Config (all optional):
//   port          0 = pick a free one; the host is always 127.0.0.1
//   issuer        default http://127.0.0.1:<port>
//   proxy         trust X-Forwarded-* (koa app.proxy), for an IdP behind tailpass
//   clients       oidc-provider client metadata; defaults: client_secret_basic,
//                 grant_types [authorization_code], response_types [code],
//                 require_auth_time true (so every ID token carries auth_time)
//   accounts      { login: { claims } }; sub = login, preferred_username = login
//   ttl           seconds: a number for all of IdToken, AccessToken,
//                 RefreshToken, Session, Grant, Interaction, or an object
//                 naming some of them (and AuthorizationCode)
//   auto_login    a login that every login interaction completes as
//
// See tests/idp/README.md for the endpoints and the choices made.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as querystring from 'node:querystring';

// oidc-provider prints notices with console.info; stdout carries only the
// ready line.
console.info = (...args) => console.error(...args);
console.log = (...args) => console.error(...args);

const { default: Provider } = await import('oidc-provider');

const config = JSON.parse(process.argv[2] || '{}');
const HOST = '127.0.0.1';

const accounts = config.accounts || {};
let autoLogin = config.auto_login ?? null;

// ---------------------------------------------------------------- events

const events = [];

// ---------------------------------------------------------------- storage

// An in-memory adapter like oidc-provider's own, but enumerable, so that
// /test/revoke can find everything belonging to one account.
const store = new Map(); // `${model}:${id}` -> { payload, expiresAt }
const byGrant = new Map(); // grantId -> Set of keys
const sessionUids = new Map(); // uid -> session id
const userCodes = new Map(); // userCode -> id

function now() {
  return Math.floor(Date.now() / 1000);
}

function live(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry.payload;
}

const GRANTABLE = new Set([
  'AccessToken',
  'AuthorizationCode',
  'RefreshToken',
  'DeviceCode',
  'BackchannelAuthenticationRequest',
]);

class Adapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    if (this.model === 'Session' && payload.uid) sessionUids.set(payload.uid, id);
    if (payload.userCode) userCodes.set(payload.userCode, id);
    if (GRANTABLE.has(this.model) && payload.grantId) {
      if (!byGrant.has(payload.grantId)) byGrant.set(payload.grantId, new Set());
      byGrant.get(payload.grantId).add(key);
    }
    store.set(key, {
      payload,
      expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : undefined,
    });
  }

  async find(id) {
    return live(this.key(id));
  }

  async findByUid(uid) {
    const id = sessionUids.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = userCodes.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = live(this.key(id));
    if (payload) payload.consumed = now();
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) { // eslint-disable-line class-methods-use-this
    for (const key of byGrant.get(grantId) || []) store.delete(key);
    byGrant.delete(grantId);
  }
}

// Destroys every grant, session, code, access and refresh token of `login`.
function revokeAccount(login) {
  const grants = new Set();
  let removed = 0;
  for (const [key, { payload }] of store) {
    if (payload && payload.accountId === login) {
      if (payload.grantId) grants.add(payload.grantId);
      if (key.startsWith('Grant:')) grants.add(key.slice('Grant:'.length));
      store.delete(key);
      removed += 1;
    }
  }
  for (const grantId of grants) {
    store.delete(`Grant:${grantId}`);
    for (const key of byGrant.get(grantId) || []) {
      if (store.delete(key)) removed += 1;
    }
    byGrant.delete(grantId);
  }
  return removed;
}

// ---------------------------------------------------------------- provider config

const STANDARD = new Set(['sub', 'email', 'email_verified', 'groups', 'name', 'preferred_username']);
const extraClaims = new Set();
for (const claims of Object.values(accounts)) {
  for (const k of Object.keys(claims || {})) if (!STANDARD.has(k)) extraClaims.add(k);
}

const TTL_DEFAULTS = {
  AccessToken: 3600,
  AuthorizationCode: 60,
  IdToken: 3600,
  Interaction: 600,
  RefreshToken: 86400,
  Session: 86400,
  Grant: 86400,
};
const ttl = { ...TTL_DEFAULTS };
if (typeof config.ttl === 'number') {
  for (const k of ['IdToken', 'AccessToken', 'RefreshToken', 'Session', 'Grant', 'Interaction']) {
    ttl[k] = config.ttl;
  }
} else if (config.ttl && typeof config.ttl === 'object') {
  Object.assign(ttl, config.ttl);
}

const ROUTES = {
  authorization: '/auth',
  end_session: '/session/end',
  jwks: '/jwks',
  revocation: '/token/revocation',
  token: '/token',
  userinfo: '/me',
};

function esc(s) {
  return String(s ?? '')
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

function page(title, body) {
  return `<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>${esc(title)}</title>
</head>
<body>
<h1>${esc(title)}</h1>
${body}
</body>
</html>
`;
}

async function findAccount(ctx, sub) {
  const claims = accounts[sub];
  if (!claims) return undefined;
  return {
    accountId: sub,
    async claims() {
      return { preferred_username: sub, ...claims, sub };
    },
  };
}

function signingKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  return {
    ...privateKey.export({ format: 'jwk' }),
    kid: crypto.randomBytes(8).toString('hex'),
    alg: 'RS256',
    use: 'sig',
  };
}

function providerConfig() {
  return {
    adapter: Adapter,
    clients: config.clients || [],
    clientDefaults: {
      grant_types: ['authorization_code'],
      id_token_signed_response_alg: 'RS256',
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      require_auth_time: true,
    },
    responseTypes: ['code'],
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username', ...extraClaims],
      groups: ['groups'],
    },
    // Scope-granted claims go into the ID token too, not only to userinfo.
    conformIdTokenClaims: false,
    findAccount,
    jwks: { keys: [signingKey()] },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    pkce: { methods: ['S256'], required: () => true },
    routes: ROUTES,
    ttl,
    features: {
      devInteractions: { enabled: false },
      claimsParameter: { enabled: true },
      revocation: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource,
        postLogoutSuccessSource,
      },
    },
    interactions: {
      url: (ctx, interaction) => `/interaction/${interaction.uid}`,
    },
    renderError,
    // The default, spelled out: a refresh token whenever the client may use
    // the refresh_token grant and offline_access was granted (see the
    // prompt=consent note in offlineAccessMiddleware).
    issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token')
      && code.scopes.has('offline_access'),
  };
}

// The logout confirmation: oidc-provider's form (id="op.logoutForm", method
// post, hidden xsrf) plus a hidden logout=yes, submitted by script at once.
// A client without JS parses the form and posts its hidden inputs.
async function logoutSource(ctx, form) {
  const full = form.replace(
    '</form>',
    '<input type="hidden" name="logout" value="yes"/>'
      + '<noscript><button id="logout" type="submit">Sign out</button></noscript></form>',
  );
  ctx.type = 'html';
  ctx.body = page('Sign out', `${full}
<script>document.getElementById('op.logoutForm').submit();</script>`);
}

async function postLogoutSuccessSource(ctx) {
  ctx.type = 'html';
  ctx.body = page('Signed out', '<p id="signed-out">You have been signed out.</p>');
}

async function renderError(ctx, out, error) {
  ctx.type = 'html';
  const rows = Object.entries(out)
    .map(([k, v]) => `<p><b>${esc(k)}</b>: <span id="${esc(k)}">${esc(v)}</span></p>`)
    .join('\n');
  ctx.body = page('Error', rows);
  if (!error || !error.expose) console.error('idp: error page:', error);
}

// ---------------------------------------------------------------- helpers

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function json(ctx, status, value) {
  ctx.status = status;
  ctx.type = 'application/json';
  ctx.body = JSON.stringify(value);
}

function loopbackDirect(ctx) {
  const addr = ctx.req.socket.remoteAddress || '';
  const proxied = ctx.get('x-forwarded-for') || ctx.get('x-forwarded-host')
    || ctx.get('x-forwarded-proto') || ctx.get('forwarded');
  return !proxied && (addr === '127.0.0.1' || addr === '::ffff:127.0.0.1' || addr === '::1');
}

function plainParams(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj || {})) out[k] = v;
  return out;
}

// ---------------------------------------------------------------- middleware

// /test/* control endpoints, for direct loopback callers only (never through
// a proxy such as tailpass in front of the IdP).
async function testControl(ctx, next) {
  if (!ctx.path.startsWith('/test/')) return next();
  if (!loopbackDirect(ctx)) return json(ctx, 403, { error: 'test endpoints are loopback-only' });

  if (ctx.method === 'GET' && ctx.path === '/test/events') {
    return json(ctx, 200, events);
  }
  if (ctx.method === 'POST' && (ctx.path === '/test/revoke' || ctx.path === '/test/auto-login')) {
    let body;
    try {
      body = JSON.parse((await readBody(ctx.req)) || '{}');
    } catch (err) {
      return json(ctx, 400, { error: `bad JSON: ${err.message}` });
    }
    const { login } = body;
    if (ctx.path === '/test/revoke') {
      if (typeof login !== 'string') return json(ctx, 400, { error: 'login must be a string' });
      return json(ctx, 200, { ok: true, removed: revokeAccount(login) });
    }
    if (login !== null && typeof login !== 'string') {
      return json(ctx, 400, { error: 'login must be a string or null' });
    }
    autoLogin = login;
    return json(ctx, 200, { ok: true, auto_login: autoLogin });
  }
  return json(ctx, 404, { error: `no test endpoint ${ctx.method} ${ctx.path}` });
}

// Records requests to the authorization, token, userinfo and end-session
// endpoints in order. Form bodies are read back from what oidc-provider
// parsed (ctx.oidc.body), so the request stream is left to it.
async function recordEvents(ctx, next) {
  const { path, method } = ctx;
  let event;
  const formParams = () => plainParams(method === 'POST' ? ctx.oidc?.body : ctx.query);

  if (path === ROUTES.authorization) {
    event = { kind: 'authorize', method, params: plainParams(ctx.query) };
  } else if (path === ROUTES.token && method === 'POST') {
    event = { kind: 'token', grant_type: null, has_code_verifier: false };
  } else if (path === ROUTES.userinfo) {
    event = { kind: 'userinfo', method };
  } else if (path === ROUTES.end_session) {
    event = { kind: 'end_session', method, params: plainParams(ctx.query) };
  } else if (path === `${ROUTES.end_session}/confirm`) {
    event = { kind: 'end_session_confirm', method, params: {} };
  }
  if (!event) return next();

  events.push(event);
  try {
    await next();
  } finally {
    if (event.kind === 'token') {
      const body = ctx.oidc?.body || {};
      event.grant_type = body.grant_type ?? null;
      event.has_code_verifier = typeof body.code_verifier === 'string' && body.code_verifier !== '';
    } else if (method === 'POST' && event.params) {
      event.params = formParams();
    }
    event.status = ctx.status;
  }
  return undefined;
}

// OpenID Connect Core says offline_access is ignored unless prompt contains
// consent, and oidc-provider drops it otherwise. This test IdP grants
// everything without asking, so for a client that may use refresh tokens,
// a GET authorization request asking for offline_access without
// prompt=consent (and without prompt=none) gets consent added to its prompt:
// the login then passes through one consent interaction, which completes at
// once, and offline_access is granted, so the token response carries a
// refresh token after a plain login.
async function offlineAccessMiddleware(ctx, next) {
  if (ctx.path !== ROUTES.authorization || ctx.method !== 'GET') return next();
  const q = { ...ctx.query };
  const scopes = String(q.scope || '').split(' ');
  const prompts = String(q.prompt || '').split(' ').filter(Boolean);
  if (scopes.includes('offline_access') && !prompts.includes('consent') && !prompts.includes('none')
    && typeof q.client_id === 'string') {
    const client = await provider.Client.find(q.client_id).catch(() => undefined);
    if (client && client.grantTypeAllowed('refresh_token')) {
      q.prompt = [...prompts, 'consent'].join(' ');
      ctx.query = q;
    }
  }
  return next();
}

// oidc-provider also logs out with its generic auto-submitting form_post page
// (hidden xsrf and logout=yes, posted to the end-session confirm endpoint):
// at the end-session endpoint without a session, and on resuming an
// authorization whose login chose another account than the session's. Give
// that form the same id as the confirmation page's.
async function logoutFormId(ctx, next) {
  await next();
  const confirm = `${ROUTES.end_session}/confirm"`;
  if (typeof ctx.body === 'string' && ctx.body.includes(confirm)
    && !ctx.body.includes('id="op.logoutForm"')) {
    ctx.body = ctx.body.replace('<form method="post"', '<form id="op.logoutForm" method="post"');
  }
}

// ---------------------------------------------------------------- interactions

function requestedClaims(params) {
  const names = new Set();
  if (params.claims) {
    try {
      const parsed = JSON.parse(params.claims);
      for (const part of [parsed.id_token, parsed.userinfo]) {
        for (const k of Object.keys(part || {})) names.add(k);
      }
    } catch {
      // oidc-provider has validated it already
    }
  }
  return [...names];
}

// A grant of everything the request asked for.
async function grantAll(interaction, accountId) {
  const { params, prompt } = interaction;
  let grant;
  if (interaction.grantId) {
    grant = await provider.Grant.find(interaction.grantId);
    if (grant && grant.accountId !== accountId) grant = undefined;
  }
  if (!grant) grant = new provider.Grant({ accountId, clientId: params.client_id });
  if (params.scope) grant.addOIDCScope(params.scope);
  const details = prompt.details || {};
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  const claims = [...requestedClaims(params), ...(details.missingOIDCClaims || [])];
  if (claims.length) grant.addOIDCClaims(claims);
  for (const [indicator, scopes] of Object.entries(details.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  return grant.save();
}

// Completes the interaction: a fresh login (so auth_time is now) when the
// login prompt is pending, and consent to everything requested.
async function finish(ctx, interaction, login) {
  const result = {};
  let accountId;
  if (login) {
    accountId = login;
    result.login = { accountId, ts: now() };
  } else {
    accountId = interaction.session?.accountId;
  }
  result.consent = { grantId: await grantAll(interaction, accountId) };
  const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
    mergeWithLastSubmission: false,
  });
  ctx.status = 303;
  ctx.redirect(returnTo);
}

function loginPage(ctx, interaction, error) {
  const client = interaction.params.client_id;
  ctx.type = 'html';
  ctx.body = page('Sign in', `<p>Sign in to continue to <span id="client">${esc(client)}</span>.</p>
${error ? `<p id="error">${esc(error)}</p>` : ''}<form id="login-form" method="post" action="/interaction/${esc(interaction.uid)}">
<label for="login">Login</label>
<input id="login" name="login" autofocus value="${esc(ctx.method === 'POST' ? '' : interaction.params.login_hint || '')}">
<button id="submit" type="submit">Sign in</button>
</form>
<p><a id="abort" href="/interaction/${esc(interaction.uid)}/abort">Cancel</a></p>`);
}

async function interactions(ctx, next) {
  const m = /^\/interaction\/([^/]+)(\/abort)?$/.exec(ctx.path);
  if (!m) return next();
  let interaction;
  try {
    interaction = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (err) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Error', `<p id="error">${esc(err.error_description || err.message)}</p>`);
    return undefined;
  }
  if (interaction.uid !== m[1]) {
    ctx.status = 400;
    ctx.type = 'html';
    ctx.body = page('Error', '<p id="error">interaction mismatch</p>');
    return undefined;
  }
  ctx.set('cache-control', 'no-store');

  if (m[2]) {
    if (ctx.method !== 'GET') return next();
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, {
      error: 'access_denied',
      error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
    ctx.status = 303;
    return ctx.redirect(returnTo);
  }

  const needsLogin = interaction.prompt.name === 'login';
  if (ctx.method === 'GET') {
    if (!needsLogin) return finish(ctx, interaction, null);
    const hint = interaction.params.login_hint;
    if (typeof hint === 'string' && accounts[hint]) return finish(ctx, interaction, hint);
    if (autoLogin && accounts[autoLogin]) return finish(ctx, interaction, autoLogin);
    return loginPage(ctx, interaction, null);
  }
  if (ctx.method === 'POST') {
    const form = querystring.parse(await readBody(ctx.req));
    const login = typeof form.login === 'string' ? form.login.trim() : '';
    if (!needsLogin) return finish(ctx, interaction, null);
    if (!accounts[login]) {
      ctx.status = 200;
      return loginPage(ctx, interaction, `Unknown login: ${login}`);
    }
    return finish(ctx, interaction, login);
  }
  return next();
}

// ---------------------------------------------------------------- start

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(config.port || 0, HOST, resolve);
});
const { port } = server.address();
const issuer = config.issuer || `http://${HOST}:${port}`;

const provider = new Provider(issuer, providerConfig());
provider.proxy = Boolean(config.proxy);

provider.use(testControl);
provider.use(recordEvents);
provider.use(offlineAccessMiddleware);
provider.use(logoutFormId);
provider.use(interactions);

provider.on('server_error', (ctx, err) => {
  console.error(`idp: server_error on ${ctx.method} ${ctx.path}:`, err);
});
for (const name of ['authorization.error', 'grant.error', 'end_session.error', 'userinfo.error', 'revocation.error']) {
  provider.on(name, (ctx, err) => {
    console.error(`idp: ${name} on ${ctx.method} ${ctx.path}: ${err.error || err.name}: ${err.error_description || err.message}`);
  });
}

// oidc-provider validates static clients lazily; check them now so a bad
// client config fails the start, not a later request.
for (const { client_id: id } of config.clients || []) {
  try {
    if (!await provider.Client.find(String(id))) throw new Error('not found');
  } catch (err) {
    console.error(`idp: invalid client ${id}: ${err.error_description || err.message}`);
    process.exit(1);
  }
}

server.on('request', provider.callback());

process.stdout.write(`${JSON.stringify({ ready: true, issuer, port })}\n`);

// Exit when stdin closes: the test process that started this one is gone
// or done with it.
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
