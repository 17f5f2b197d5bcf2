// The story of issue #11 in headless Chromium against real Pocket ID
// (driven by tests/pocket_id.rs): first-admin setup with a passkey held by a
// CDP virtual authenticator, a group, sign-in through tailpass's portal,
// identity and group headers at the upstream, a websocket, background
// refresh, step-up, logout, re-login with the passkey, and the admin
// actions at Pocket ID (revoke the app, remove from the group, disable,
// delete) each ending tailpass's session.
//
// Chromium reaches both tailnet hosts (gw and auth) through the test kit's
// entry proxy and trusts their local CAs through the NSS db in $NSS_HOME:
// WebAuthn needs a secure context, which a page with a certificate error is
// not (the helpers shared with login.mjs are in lib.mjs). The
// admin API calls go straight to Pocket ID on 127.0.0.1 with the static API
// key, except "revoke my app", which Pocket ID only offers to the user
// (their browser session).
//
// Environment:
//   PROXY       the entry proxy, http://127.0.0.1:PORT
//   GW, AUTH    https://gw.<domain>, https://auth.<domain>
//   API, API_KEY  Pocket ID on 127.0.0.1 (http://127.0.0.1:PORT) and its STATIC_API_KEY
//   NSS_HOME    HOME for Chromium, with .pki/nssdb trusting the local CAs
//   CLIENT_ID   the client id of the `pocketid` provider (for "revoke")
//   GROUP       the group name the rules need (e.g. family)
//   REFRESH_MS  tailpass's refresh_interval in ms
//   MAX_AUTH_AGE_MS  the /admin route's max_auth_age in ms
//   STEP_UP     "fresh" (a prompt=login sign-in counts: 200 at /admin) or
//               "refused" (the 403 page #no-fresh-sign-in)
//   IGNORED_BY_POCKET_ID  admin actions after which this Pocket ID still
//               refreshes the app's tokens, e.g. "disable" (v2.3.0):
//               the test then proves the session lives on (a known limit)
//   ARTIFACTS   screenshots; CHROMIUM the browser binary
//
// Output: one JSON line on stdout at the end, {"ok":true,"steps":[...],
// "timings":{...}} or {"ok":false,"step":...,"error":...}; the exit status is
// non-zero on failure. Progress goes to stderr.

import {
  excerpt,
  fail,
  finish,
  goto,
  launch,
  log,
  mustHave,
  need,
  run,
  setup,
  sleep,
  step,
  text,
  virtualAuthenticator,
  waitUrl,
  watch,
} from './lib.mjs';

const env = process.env;
const { TIMEOUT } = setup({ name: 'pocketid.mjs', stepTimeout: 30000, totalTimeout: 540000 });
const timings = {};

const PROXY = need('PROXY');
const GW = need('GW').replace(/\/+$/, '');
const AUTH = need('AUTH').replace(/\/+$/, '');
const API = need('API').replace(/\/+$/, '');
const API_KEY = need('API_KEY');
const NSS_HOME = need('NSS_HOME');
const CLIENT_ID = need('CLIENT_ID');
const GROUP = need('GROUP');
const REFRESH_MS = Number(need('REFRESH_MS'));
const MAX_AUTH_AGE_MS = Number(need('MAX_AUTH_AGE_MS'));
const STEP_UP = need('STEP_UP');
// Admin actions this Pocket ID does not reflect in its token endpoint.
const IGNORED = (env.IGNORED_BY_POCKET_ID || '').split(',').filter(Boolean);
const PORTAL = GW + '/auth';
// The exact original URL, query string included, must survive the sign-in.
const START_URL = new URL(GW + '/app/start/page?tab=two&q=a%20b').href;
const WS_URL = GW + '/term/';
const onPortalLogin = (u) => u.startsWith(PORTAL + '/login');

// ---- Pocket ID's admin API (static API key) --------------------------------

async function api(method, p, body) {
  const r = await fetch(API + p, {
    method,
    headers: { 'x-api-key': API_KEY, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const t = await r.text();
  if (!r.ok) fail(`Pocket ID ${method} ${p}: ${r.status} ${t.slice(0, 300)}`);
  try {
    return t ? JSON.parse(t) : null;
  } catch {
    return t;
  }
}

async function findUser(username) {
  const v = await api('GET', `/api/users?search=${encodeURIComponent(username)}`);
  const list = Array.isArray(v) ? v : v.data || [];
  const u = list.find((x) => x.username === username);
  if (!u) fail(`Pocket ID has no user ${username}: ${JSON.stringify(v).slice(0, 300)}`);
  return u;
}

async function setDisabled(user, disabled) {
  const u = await api('GET', `/api/users/${user.id}`);
  await api('PUT', `/api/users/${user.id}`, {
    username: u.username,
    email: u.email,
    emailVerified: !!u.emailVerified,
    firstName: u.firstName || '',
    lastName: u.lastName || '',
    displayName: u.displayName || '',
    isAdmin: !!u.isAdmin,
    locale: u.locale ?? null,
    disabled,
  });
}

// ---- the story ---------------------------------------------------------------

async function main() {
  const browser = await launch({ proxy: PROXY, home: NSS_HOME });
  try {
    // No ignoreHTTPSErrors: the local CAs are trusted through NSS, so the
    // tailnet hosts are secure contexts.
    const context = await browser.newContext({ viewport: { width: 1000, height: 800 } });
    await story(context);
    finish({ timings, browser: browser.version() });
  } finally {
    await browser.close().catch(() => {});
  }
}

async function story(context) {
  const page = watch(await context.newPage());
  const { credentials, signCount } = await virtualAuthenticator(context, page);

  // On Pocket ID's authorize page: press "Sign in" (once for the passkey,
  // once more on the consent card) until the browser leaves for `until`.
  async function throughPocketId(until, what) {
    await waitUrl(page, (u) => u.startsWith(AUTH + '/'), 'at Pocket ID');
    const deadline = Date.now() + TIMEOUT;
    for (;;) {
      if (until(page.url())) break;
      if (Date.now() > deadline) fail(`expected to leave Pocket ID for ${what}`);
      const again = page.getByRole('button', { name: 'Try again', exact: true });
      if ((await again.count()) > 0 && (await again.isVisible().catch(() => false))) {
        fail(`Pocket ID shows an error: ${await excerpt(page)}`);
      }
      const btn = page.getByRole('button', { name: 'Sign in', exact: true });
      try {
        if ((await btn.count()) > 0 && (await btn.isEnabled({ timeout: 500 }))) {
          await btn.click({ timeout: 2000 });
        }
      } catch {
        // navigated under us
      }
      await page.waitForTimeout(400);
    }
    await page.waitForLoadState('load');
  }

  // From a protected URL through the portal and Pocket ID back to it.
  async function signIn(url, provider = 'pocketid', landing = (u) => u === url) {
    const before = await signCount();
    const navFrom = page.navigations.length;
    await goto(page, url);
    await waitUrl(page, onPortalLogin, `the portal login page (${PORTAL}/login…)`);
    await page.locator(`a.provider[data-provider="${provider}"]`).first().click({ timeout: TIMEOUT });
    await throughPocketId((u) => u.startsWith(GW + '/'), url);
    if (!landing(page.url())) fail(`expected to land on ${url}, landed on ${page.url()}`);
    const authorize = page.navigations.slice(navFrom).find((u) => u.startsWith(AUTH + '/authorize'));
    const q = authorize ? new URL(authorize).searchParams : new URLSearchParams();
    return {
      passkey_used: (await signCount()) > before,
      sign_count: await signCount(),
      prompt: q.get('prompt'),
      max_age: q.get('max_age'),
      code_challenge_method: q.get('code_challenge_method'),
    };
  }

  const echoJson = async () => {
    const body = await page.locator('body').innerText({ timeout: TIMEOUT });
    try {
      return JSON.parse(body);
    } catch {
      fail(`expected the echo upstream's JSON, got ${JSON.stringify(body.slice(0, 200))}`);
    }
  };

  // 1. First admin: /setup → sign-up form → a passkey.
  await step('setup', page, async () => {
    await goto(page, AUTH + '/setup');
    await waitUrl(page, (u) => u.startsWith(AUTH + '/signup/setup'), 'the first-admin sign-up form');
    await page.getByLabel('Username', { exact: true }).fill('alice', { timeout: TIMEOUT });
    await page.getByLabel('Email', { exact: true }).fill('alice@example.com');
    await page.getByLabel('First name', { exact: true }).fill('Alice');
    await page.getByLabel('Last name', { exact: true }).fill('Liddell');
    await page.getByRole('button', { name: 'Sign Up', exact: true }).click();
    await waitUrl(page, (u) => u.startsWith(AUTH + '/signup/add-passkey'), 'the add-passkey page');
    await page.getByRole('button', { name: 'Add Passkey', exact: true }).click();
    await waitUrl(page, (u) => u.startsWith(AUTH + '/settings'), 'the account settings (passkey added)');
    const creds = await credentials();
    if (creds.length !== 1) fail(`expected the authenticator to hold one passkey, it holds ${creds.length}`);
    return { rp_id: creds[0].rpId, resident: creds[0].isResidentCredential };
  });

  // 2. A group with the new admin in it (admin API).
  const user = await findUser('alice');
  let group;
  await step('group', page, async () => {
    group = await api('POST', '/api/user-groups', { friendlyName: 'Family', name: GROUP });
    await api('PUT', `/api/user-groups/${group.id}/users`, { userIds: [user.id] });
    return { group: group.name, user: user.id };
  });

  // 3. A protected URL with a query string → portal → Pocket ID (consent)
  //    → back on exactly that URL.
  await step('sign-in', page, async () => {
    const r = await signIn(START_URL);
    if (r.code_challenge_method !== 'S256') fail(`PKCE not used: ${JSON.stringify(r)}`);
    return r;
  });

  // 4. What the upstream saw: identity and groups from Pocket ID.
  await step('headers', page, async () => {
    const j = await echoJson();
    const h = j.headers || {};
    const one = (n) => (h[n] || []).join(',');
    if (one('remote-email') !== 'alice@example.com') fail(`Remote-Email is ${JSON.stringify(h['remote-email'])}`);
    if (!one('remote-user')) fail('no Remote-User header');
    if (!one('remote-groups').split(/[ ,]+/).includes(GROUP)) fail(`Remote-Groups is ${JSON.stringify(h['remote-groups'])}`);
    if (!j.path.includes('tab=two&q=a%20b')) fail(`the upstream saw path ${j.path}`);
    return { path: j.path, user: one('remote-user'), email: one('remote-email'), groups: one('remote-groups'), roles: one('remote-roles') };
  });

  // 5. A websocket through tailpass, in a second tab.
  const tab = watch(await context.newPage());
  const wsOpen = async () => {
    await goto(tab, WS_URL);
    if (tab.url() !== WS_URL) fail(`expected to stay at ${WS_URL} (signed in), at ${tab.url()}`);
    const deadline = Date.now() + TIMEOUT;
    while ((await text(tab, '#status')) !== 'echo: hello') {
      if (Date.now() > deadline) fail(`the websocket never echoed (#status ${JSON.stringify(await text(tab, '#status'))})`);
      await tab.waitForTimeout(200);
    }
  };
  const wsClosed = async () => ((await text(tab, '#closed')) || '').length > 0;
  await step('websocket', tab, async () => {
    await wsOpen();
    return { status: await text(tab, '#status') };
  });

  // 6. Background refresh: well past refresh_interval, with the websocket
  //    open and no request, the session is alive and the socket still open.
  //    (That the ticker refreshes such sessions shows in step 11: there the
  //    socket closes while the page makes no request at all.)
  await step('background-refresh', tab, async () => {
    await sleep(REFRESH_MS * 2.5);
    if (await wsClosed()) fail(`the websocket closed: ${await text(tab, '#closed')}`);
    const resp = await goto(page, START_URL);
    if (page.url() !== START_URL || resp.status() !== 200) fail(`session lost after refreshes: ${resp.status()} at ${page.url()}`);
    return { waited_ms: REFRESH_MS * 2.5 };
  });

  // 7. Step-up: the /admin route wants a sign-in younger than max_auth_age.
  await step('step-up', page, async () => {
    await sleep(MAX_AUTH_AGE_MS + 1000);
    const before = await signCount();
    const navFrom = page.navigations.length;
    const target = GW + '/admin/panel?x=1';
    const resp = await goto(page, target);
    await throughPocketId((u) => u.startsWith(GW + '/'), target);
    const authorize = page.navigations.slice(navFrom).find((u) => u.startsWith(AUTH + '/authorize'));
    if (!authorize) fail(`the step-up never went to Pocket ID (navigations ${JSON.stringify(page.navigations.slice(navFrom))})`);
    const q = new URL(authorize).searchParams;
    if (q.get('prompt') !== 'login' || !q.get('max_age')) fail(`step-up did not ask for prompt=login and max_age: ${authorize}`);
    const after = await signCount();
    const refused = (await page.locator('#no-fresh-sign-in').count()) > 0;
    const body = await excerpt(page);
    if (STEP_UP === 'fresh') {
      if (refused || page.url() !== target) fail(`expected ${target} after a fresh sign-in, at ${page.url()}: ${body}`);
      if (!(after > before)) fail(`the passkey was not used again (signCount ${before} → ${after})`);
      await echoJson();
    } else {
      if (!refused) fail(`expected the 403 page with #no-fresh-sign-in, at ${page.url()}: ${body}`);
      if (!body.includes('cannot prove a fresh sign-in')) fail(`the page does not say "cannot prove a fresh sign-in": ${body}`);
    }
    return { prompt: q.get('prompt'), max_age: q.get('max_age'), sign_count_before: before, sign_count_after: after, refused, first_status: resp?.status() };
  });

  // 8. Logout: tailpass's own page, then the provider's end-session link.
  await step('logout', page, async () => {
    await goto(page, PORTAL + '/');
    await mustHave(page, 'form #logout', 'a sign-out button in a form');
    const [resp] = await Promise.all([
      page.waitForResponse((r) => r.url().startsWith(PORTAL + '/logout') && r.request().method() === 'POST', { timeout: TIMEOUT }),
      page.locator('form #logout').first().click({ timeout: TIMEOUT }),
    ]);
    await page.waitForLoadState('load');
    if (resp.status() !== 200) fail(`POST /auth/logout answered ${resp.status()}, expected 200`);
    await mustHave(page, 'h1#signed-out', 'the signed-out heading');
    const h1 = await text(page, 'h1#signed-out');
    if (!h1.includes('You are signed out of tailpass')) fail(`h1#signed-out reads ${JSON.stringify(h1)}`);
    await mustHave(page, 'a#provider-logout', "the link to Pocket ID's end-session");
    const href = await page.locator('a#provider-logout').getAttribute('href');
    const u = new URL(href, page.url());
    if (!u.href.startsWith(AUTH + '/')) fail(`a#provider-logout goes to ${u.href}`);
    if (!u.searchParams.get('id_token_hint')) fail(`a#provider-logout has no id_token_hint: ${u.href}`);
    if (u.searchParams.get('post_logout_redirect_uri') !== PORTAL + '/logged-out') {
      fail(`post_logout_redirect_uri is ${u.searchParams.get('post_logout_redirect_uri')}`);
    }
    await page.locator('a#provider-logout').click();
    await waitUrl(page, (x) => x.startsWith(PORTAL + '/logged-out'), `${PORTAL}/logged-out (Pocket ID ended its session)`);
    await mustHave(page, 'h1#logged-out', 'the logged-out heading');
    return { end_session: u.origin + u.pathname };
  });
  await step('websocket-closed-by-logout', tab, async () => {
    const deadline = Date.now() + 10000;
    while (!(await wsClosed())) {
      if (Date.now() > deadline) fail('the websocket stayed open after the sign-out');
      await tab.waitForTimeout(200);
    }
    return { closed: await text(tab, '#closed') };
  });

  // 9. Signing in again needs the passkey (both sessions ended).
  await step('re-login-needs-passkey', page, async () => {
    const r = await signIn(START_URL);
    if (!r.passkey_used) fail(`signed in again without the passkey (signCount ${r.sign_count})`);
    if (r.prompt !== 'login') fail(`the first sign-in after a sign-out did not send prompt=login (${r.prompt})`);
    return r;
  });

  // 10. The strict provider (no trust_prompt_login): a step-up route can
  //     never be satisfied without auth_time.
  await step('strict-step-up-refused', page, async () => {
    await goto(page, PORTAL + '/');
    await page.locator('form #logout').first().click({ timeout: TIMEOUT });
    await mustHave(page, 'h1#signed-out', 'the signed-out heading');
    const target = GW + '/admin/strict';
    const before = await signCount();
    await goto(page, target);
    await waitUrl(page, onPortalLogin, 'the portal login page');
    await page.locator('a.provider[data-provider="strict"]').first().click({ timeout: TIMEOUT });
    await throughPocketId((u) => u.startsWith(GW + '/'), target);
    await mustHave(page, '#no-fresh-sign-in', 'the "cannot prove a fresh sign-in" page');
    const body = await excerpt(page);
    if (!body.includes('cannot prove a fresh sign-in')) fail(`the page does not say "cannot prove a fresh sign-in": ${body}`);
    const after = await signCount();
    // Whatever that left, the next steps start from a `pocketid` session.
    await context.clearCookies({ domain: new URL(GW).hostname });
    return { sign_count_before: before, sign_count_after: after };
  });

  // 11. Admin actions at Pocket ID end the session within refresh_interval:
  //     the open websocket closes (background refresh, no request), then a
  //     request is sent to sign in.
  async function endedBy(name, action, restore) {
    const ignored = IGNORED.includes(name);
    await step(ignored ? `${name}-ignored-by-pocket-id` : `${name}-ends-session`, tab, async () => {
      const relogin = await ensureSignedIn();
      await wsOpen();
      const t0 = Date.now();
      await action();
      if (ignored) {
        // Pocket ID 2.3.0 keeps refreshing the tokens of a disabled user
        // (and answers userinfo): nothing tells tailpass, the session lives on.
        await sleep(REFRESH_MS * 2.5);
        if (await wsClosed()) fail(`the websocket closed after "${name}", which this Pocket ID ignores: ${await text(tab, '#closed')}`);
        const resp = await goto(page, START_URL);
        if (page.url() !== START_URL || resp.status() !== 200) fail(`the session ended after "${name}" (${resp.status()} at ${page.url()})`);
        timings[name] = { still_alive_after_ms: Date.now() - t0 };
        if (restore) await restore();
        return { still_alive_after_ms: Date.now() - t0, relogin };
      }
      const deadline = t0 + REFRESH_MS * 3 + 10000;
      while (!(await wsClosed())) {
        if (Date.now() > deadline) fail(`the websocket was still open ${Date.now() - t0} ms after "${name}"`);
        await tab.waitForTimeout(100);
      }
      const wsMs = Date.now() - t0;
      await goto(page, START_URL);
      if (!onPortalLogin(page.url())) fail(`after "${name}" ${START_URL} did not send to sign in (at ${page.url()})`);
      const loginMs = Date.now() - t0;
      timings[name] = { websocket_closed_ms: wsMs, sign_in_required_ms: loginMs };
      log(`${name}: websocket closed after ${wsMs} ms, sign-in required after ${loginMs} ms`);
      if (restore) await restore();
      return { websocket_closed_ms: wsMs, sign_in_required_ms: loginMs, closed: await text(tab, '#closed'), relogin };
    });
  }

  // Signed in at START_URL (200), signing in if sent to; a 403 (the group
  // put back, not yet refreshed) is waited out.
  async function ensureSignedIn() {
    const deadline = Date.now() + REFRESH_MS * 3 + 10000;
    for (;;) {
      const resp = await goto(page, START_URL);
      if (page.url() === START_URL && resp.status() === 200) return null;
      if (onPortalLogin(page.url())) return signIn(START_URL);
      if (Date.now() > deadline) fail(`${START_URL} answers ${resp.status()} at ${page.url()}`);
      await page.waitForTimeout(500);
    }
  }

  // Revoke the app, as the user at Pocket ID (needs Pocket ID's session:
  // the sign-in inside endedBy made one).
  await endedBy('revoke', async () => {
    const pidPage = await context.newPage();
    await goto(pidPage, AUTH + '/settings/apps');
    const status = await pidPage.evaluate(
      async (id) => (await fetch(`/api/oidc/users/me/authorized-clients/${id}`, { method: 'DELETE' })).status,
      CLIENT_ID,
    );
    await pidPage.close();
    if (status >= 300) fail(`revoking the app at Pocket ID answered ${status}`);
  });

  // Removal from the group: the next refresh's claims drop the role → 403.
  await step('group-removal-403', page, async () => {
    await ensureSignedIn();
    const t0 = Date.now();
    await api('PUT', `/api/user-groups/${group.id}/users`, { userIds: [] });
    let status = 200;
    while (status !== 403) {
      if (Date.now() - t0 > REFRESH_MS * 3 + 10000) fail(`still ${status} ${Date.now() - t0} ms after the removal`);
      await page.waitForTimeout(250);
      status = (await goto(page, START_URL)).status();
      if (page.url() !== START_URL) fail(`group removal sent the browser to ${page.url()}`);
    }
    timings['group-removal'] = { forbidden_ms: Date.now() - t0 };
    await api('PUT', `/api/user-groups/${group.id}/users`, { userIds: [user.id] });
    return { forbidden_ms: Date.now() - t0 };
  });

  await endedBy(
    'disable',
    () => setDisabled(user, true),
    () => setDisabled(user, false),
  );
  await endedBy('delete', () => api('DELETE', `/api/users/${user.id}`));
}

await run(main, () => ({ timings }));
