// A scripted walk of tailpass's login in headless Chromium (playwright-core).
//
// The browser reaches the tailnet through the test kit's entry proxy
// (crates/testkit/src/entry.rs) and the identity provider directly: Chromium
// never sends 127.0.0.1 through a proxy, and the test IdP listens there.
// The helpers shared with pocketid.mjs are in lib.mjs.
//
// Environment:
//   MODE       login (default): the whole walk below; smoke: only open
//              START_URL, check the websocket page works, print its title.
//   PROXY      the entry proxy, e.g. http://127.0.0.1:PORT
//   START_URL  a protected page serving the websocket demo page,
//              e.g. https://gw.<domain>/app/
//   PORTAL     the portal base, e.g. https://gw.<domain>/auth   (login mode)
//   LOGIN      the IdP account name, e.g. alice                  (login mode)
//   EMAIL      optional: /whoami must show it
//   FORBIDDEN_URL, NOT_FOUND_URL, DOWN_URL  optional (login mode): pages
//              answering 403, 404 and 502, screenshot with the portal's
//              pages in every look (light, dark, phone) in step "pages"
//   STALE_TITLE  optional: the title of a route whose max_auth_age has
//              passed by step "pages"; the dashboard must show it as
//              asking to sign in again
//   ARTIFACTS  directory for screenshots (default ./artifacts)
//   CHROMIUM   the browser binary (default /usr/bin/chromium)
//   STEP_TIMEOUT_MS  per wait (default 20000); TOTAL_TIMEOUT_MS (default 240000)
//
// Output: one JSON line on stdout at the end, {"ok":true,"steps":[...]} or
// {"ok":false,"step":...,"error":...}; the exit status is non-zero on failure.
// Progress goes to stderr.

import {
  fail,
  finish,
  gallery,
  goto,
  launch,
  looks,
  mustHave,
  need as needVar,
  run,
  setup,
  step,
  text,
  waitText,
  waitUrl,
  watch,
} from './lib.mjs';

const env = process.env;
const MODE = env.MODE || 'login';
const { TIMEOUT } = setup({ name: 'login.mjs', stepTimeout: 20000, totalTimeout: 240000 });

const need = (name) => needVar(name, ` (MODE=${MODE})`);

function sameUrl(a, b) {
  return new URL(a).href === new URL(b).href;
}

const wsEchoed = (page) =>
  waitText(page, '#status', (t) => t === 'echo: hello', 'read "echo: hello" (websocket through tailpass)');

async function smoke(browser, context) {
  const START_URL = need('START_URL');
  const page = watch(await context.newPage());
  let title = null;
  let status = null;
  await step('smoke', page, async () => {
    const resp = await goto(page, START_URL);
    status = await wsEchoed(page);
    title = await page.title();
    return { http_status: resp ? resp.status() : null, title, status };
  });
  return { title, status, browser: browser.version() };
}

async function login(browser, context) {
  const START_URL = new URL(need('START_URL')).href;
  const PORTAL = need('PORTAL').replace(/\/+$/, '');
  const LOGIN = need('LOGIN');
  const EMAIL = env.EMAIL || '';
  const onLogin = (u) => u.startsWith(PORTAL + '/login');

  const page = watch(await context.newPage());
  let signedInAt = Date.now();

  // 1. A protected page sends us to the portal's login page.
  await step('open-start', page, async () => {
    await goto(page, START_URL);
    await waitUrl(page, onLogin, `the portal login page (${PORTAL}/login…)`);
    const n = await mustHave(page, 'a.provider[data-provider]', 'identity provider links');
    await mustHave(page, '#qr', 'a QR code');
    await looks(page, 'login');
    const providers = await page
      .locator('a.provider[data-provider]')
      .evaluateAll((as) => as.map((a) => a.getAttribute('data-provider')));
    return { providers, provider_links: n };
  });

  // 2. The first provider leads to the IdP's login form; fill it in.
  await step('idp-login', page, async () => {
    const first = page.locator('a.provider[data-provider]').first();
    const provider = await first.getAttribute('data-provider');
    await first.click({ timeout: TIMEOUT });
    await mustHave(page, '#login', 'the IdP login field');
    await mustHave(page, '#submit', 'the IdP submit button');
    await page.locator('#login').fill(LOGIN, { timeout: TIMEOUT });
    return { provider };
  });

  // 3. Submitted, we are back exactly where we started, signed in; the
  //    websocket works.
  await step('back-at-start', page, async () => {
    await page.locator('#submit').click({ timeout: TIMEOUT });
    await waitUrl(page, (u) => sameUrl(u, START_URL), `back at ${START_URL}`);
    signedInAt = Date.now();
    return { status: await wsEchoed(page) };
  });

  // 4. The portal dashboard lists services and offers sign-out.
  await step('dashboard', page, async () => {
    await goto(page, PORTAL + '/');
    const services = await mustHave(page, 'a.service', 'service links');
    await mustHave(page, 'form #logout', 'a sign-out button in a form');
    return { services };
  });

  // 5. Who am I.
  await step('whoami', page, async () => {
    await goto(page, PORTAL + '/whoami');
    await mustHave(page, '#whoami', 'the #whoami block');
    const text = (await page.locator('#whoami').first().textContent()) || '';
    if (EMAIL && !text.includes(EMAIL)) fail(`#whoami does not show ${EMAIL}: ${JSON.stringify(text.trim())}`);
    return { whoami: text.trim().slice(0, 200) };
  });

  // 5b. Every page in every look (light, dark, phone): the dashboard (with
  //     a route whose sign-in is too old by now), whoami, the sign-out
  //     page, and the error pages.
  await step('pages', page, async () => {
    const shots = [];
    const STALE = env.STALE_TITLE;
    if (STALE) {
      await page.waitForTimeout(Math.max(0, signedInAt + 4000 - Date.now()));
      await goto(page, PORTAL + '/');
      const again = await text(page, 'a.again');
      if (!again || !again.includes(STALE)) fail(`the dashboard does not ask to sign in again for ${STALE}: ${again}`);
      if (!(await text(page, '.badge'))) fail('no "asks you to sign in again" badge');
    }
    shots.push(await gallery(context, 'dashboard', PORTAL + '/'));
    shots.push(await gallery(context, 'whoami', PORTAL + '/whoami'));
    shots.push(await gallery(context, 'logout-page', PORTAL + '/logout'));
    for (const [label, v, want] of [
      ['403', 'FORBIDDEN_URL', 403],
      ['404', 'NOT_FOUND_URL', 404],
      ['502', 'DOWN_URL', 502],
    ]) {
      if (!env[v]) continue;
      const g = await gallery(context, label, env[v]);
      if (g.status !== want) fail(`${env[v]} answered ${g.status}, not ${want}`);
      if (want === 403) {
        // The 403 names who is signed in, beside "Sign in as someone else".
        await goto(page, env[v]);
        const who = await text(page, '#signed-in');
        if (!who || !who.includes('signed in as')) fail(`the 403 page does not name who is signed in: ${who}`);
      }
      shots.push(g);
    }
    return { pages: shots.map((g) => g.page) };
  });

  // 6. The protected page again, websocket open.
  await step('reopen-start', page, async () => {
    await goto(page, START_URL);
    if (!sameUrl(page.url(), START_URL)) fail(`expected to stay at ${START_URL} (signed in)`);
    const status = await wsEchoed(page);
    const closed = (await page.locator('#closed').first().textContent()) || '';
    if (closed.trim()) fail(`the websocket closed already: ${closed.trim()}`);
    return { status };
  });

  // 7. Sign out in a second page: tailpass's own "signed out" page first,
  // then the IdP's end-session page through the link on it.
  const page2 = watch(await context.newPage());
  await step('logout', page2, async () => {
    await goto(page2, PORTAL + '/');
    await mustHave(page2, 'form #logout', 'a sign-out button in a form');
    await page2.locator('form #logout').first().click({ timeout: TIMEOUT });
    await page2.waitForLoadState('load');
    await mustHave(page2, '#signed-out', "tailpass's signed-out page");
    await mustHave(page2, 'a#provider-logout', "a link to sign out at the provider too");
    await looks(page2, 'signed-out');
    await page2.locator('a#provider-logout').first().click({ timeout: TIMEOUT });
    const loggedOut = PORTAL + '/logged-out';
    const deadline = Date.now() + TIMEOUT;
    let clicked = false;
    let via = null;
    while (!page2.url().startsWith(loggedOut)) {
      if (Date.now() > deadline) fail(`expected to land on ${loggedOut}`);
      // The IdP's end-session page normally submits itself; if it is still
      // showing its form, confirm ("yes, sign me out").
      if (!clicked) {
        try {
          const yes = page2.locator(
            'button[form="op.logoutForm"][value="yes"], form[id="op.logoutForm"] [type="submit"][value="yes"], form[id="op.logoutForm"] [type="submit"]',
          );
          if ((await yes.count()) > 0) {
            via = page2.url();
            await page2.waitForTimeout(500); // give an auto-submit its chance
            if (!page2.url().startsWith(loggedOut) && (await yes.count()) > 0) {
              await yes.first().click({ timeout: 2000 });
              clicked = true;
            }
          }
        } catch {
          // The page navigated under us (auto-submit): look again.
        }
      }
      await page2.waitForTimeout(200);
    }
    await page2.waitForLoadState('load');
    await mustHave(page2, '#logged-out', 'the signed-out confirmation');
    await looks(page2, 'logged-out');
    return { idp_end_session: via, clicked_confirm: clicked };
  });

  // 8. The first page's websocket was closed by tailpass (session revoked).
  await step('websocket-closed', page, async () => {
    await page.bringToFront();
    const closed = await waitText(page, '#closed', (t) => t.length > 0, 'become non-empty (websocket closed)', 10000);
    return { closed };
  });

  // 9. No session any more: the protected page asks to sign in again.
  await step('start-needs-login', page, async () => {
    await goto(page, START_URL);
    await waitUrl(page, onLogin, `the portal login page again (${PORTAL}/login…)`);
    return {};
  });

  return {};
}

async function main() {
  const PROXY = need('PROXY');
  if (!['login', 'smoke'].includes(MODE)) fail(`unknown MODE ${MODE} (login or smoke)`);

  const browser = await launch({ proxy: PROXY });
  try {
    const context = await browser.newContext({
      ignoreHTTPSErrors: true,
      viewport: { width: 1000, height: 800 },
    });
    const extra = MODE === 'smoke' ? await smoke(browser, context) : await login(browser, context);
    finish({ mode: MODE, ...extra });
  } finally {
    await browser.close().catch(() => {});
  }
}

await run(main);
