// What the browser scripts (login.mjs, pocketid.mjs) share: Chromium's
// launch through the entry proxy, the CDP virtual authenticator, steps with
// screenshots and clear failures, navigation and wait helpers, and the
// run's end (one JSON line on stdout, a watchdog for the whole run).
//
// A script calls `setup` first (its name and default timeouts; the
// environment's STEP_TIMEOUT_MS, TOTAL_TIMEOUT_MS and ARTIFACTS win), then
// `run(main)`; `main` calls `finish` with what the success line carries.

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = process.env;
let name = 'browser';
let timeout = 20000;
let totalTimeout = 180000;
let artifacts = path.resolve('artifacts');
const steps = [];
let current = 'setup';
let finished = false;
let shotCount = 0;

export class StepFailure extends Error {}

export const fail = (msg) => {
  throw new StepFailure(msg);
};
export const log = (msg) => process.stderr.write(`[${name}] ${msg}\n`);
export const emit = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Names the script and fixes its timeouts; returns them. */
export function setup(opts) {
  name = opts.name;
  timeout = Number(env.STEP_TIMEOUT_MS || opts.stepTimeout);
  totalTimeout = Number(env.TOTAL_TIMEOUT_MS || opts.totalTimeout);
  artifacts = path.resolve(env.ARTIFACTS || 'artifacts');
  return { TIMEOUT: timeout, TOTAL_TIMEOUT: totalTimeout, ARTIFACTS: artifacts };
}

/** An environment variable that must be set (`hint` is added to the error). */
export function need(variable, hint = '') {
  const v = env[variable];
  if (!v) fail(`environment variable ${variable} is required${hint}`);
  return v;
}

/** Headless Chromium ($CHROMIUM or /usr/bin/chromium) whose every request
 * goes through `proxy` (Chromium never proxies 127.0.0.1); `home`, when
 * given, is its HOME (an NSS db there decides which CAs it trusts). */
export function launch({ proxy, home }) {
  current = 'launch';
  return chromium.launch({
    executablePath: env.CHROMIUM || '/usr/bin/chromium',
    timeout: 60000,
    ...(home ? { env: { ...process.env, HOME: home } } : {}),
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--proxy-server=' + proxy,
    ],
  });
}

/** A CDP virtual authenticator (a platform passkey store with user
 * verification) on `page`; `credentials()` lists what it holds,
 * `signCount()` the count of its one passkey. */
export async function virtualAuthenticator(context, page) {
  const cdp = await context.newCDPSession(page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  const credentials = async () => (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials;
  const signCount = async () => {
    const c = await credentials();
    if (c.length !== 1) fail(`expected one passkey in the authenticator, found ${c.length}`);
    return c[0].signCount;
  };
  return { cdp, authenticatorId, credentials, signCount };
}

/** A short excerpt of what the page shows, for error messages. */
export async function excerpt(page) {
  if (!page || page.isClosed()) return '';
  try {
    const t = await page.locator('body').innerText({ timeout: 2000 });
    return t.replace(/\s+/g, ' ').trim().slice(0, 400);
  } catch {
    try {
      return (await page.content()).replace(/\s+/g, ' ').slice(0, 400);
    } catch {
      return '';
    }
  }
}

/** Keeps diagnostics per page (console errors, failed requests, websocket
 * events in `page.events`) and every main-frame navigation (in
 * `page.navigations`, to see what a provider was asked). */
export function watch(page) {
  const events = [];
  const keep = (e) => {
    events.push(e);
    if (events.length > 25) events.shift();
  };
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') keep(`console.${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => keep(`pageerror: ${e.message}`));
  page.on('requestfailed', (r) => keep(`requestfailed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  page.on('websocket', (ws) => {
    keep(`websocket: ${ws.url()}`);
    ws.on('socketerror', (e) => keep(`websocket error: ${ws.url()}: ${e}`));
    ws.on('close', () => keep(`websocket closed: ${ws.url()}`));
  });
  page.events = events;
  page.navigations = [];
  page.on('request', (r) => {
    if (r.isNavigationRequest() && r.frame() === page.mainFrame()) page.navigations.push(r.url());
  });
  return page;
}

/** A full-page screenshot NN-name.png in the artifacts directory. */
export async function shot(page, label) {
  if (!page || page.isClosed()) return null;
  shotCount += 1;
  const file = path.join(artifacts, `${String(shotCount).padStart(2, '0')}-${label}.png`);
  try {
    await page.screenshot({ path: file, fullPage: true, timeout: 10000 });
    return path.basename(file);
  } catch (e) {
    log(`screenshot ${file} failed: ${e.message}`);
    return null;
  }
}

/** The looks every page is checked in: a desktop window in light and dark,
 * and a phone (375x812) in light and dark. */
const LOOKS = [
  ['light', 'light', null],
  ['dark', 'dark', null],
  ['mobile', 'light', { width: 375, height: 812 }],
  ['mobile-dark', 'dark', { width: 375, height: 812 }],
];

/** Screenshots of the page `page` shows now in every look, as
 * NN-label-LOOK.png; the page's colour scheme and size are put back. */
export async function looks(page, label) {
  const size = page.viewportSize();
  const files = {};
  for (const [look, colorScheme, viewport] of LOOKS) {
    await page.emulateMedia({ colorScheme });
    if (viewport) await page.setViewportSize(viewport);
    files[look] = await shot(page, `${label}-${look}`);
  }
  await page.emulateMedia({ colorScheme: 'light' });
  if (size) await page.setViewportSize(size);
  return files;
}

/** Opens `url` in a new page of `context`, screenshots it in every look
 * and closes it; returns its status and the files. */
export async function gallery(context, label, url) {
  const page = await context.newPage();
  try {
    const resp = await goto(page, url);
    return { page: label, status: resp ? resp.status() : null, ...(await looks(page, label)) };
  } finally {
    await page.close().catch(() => {});
  }
}

/**
 * Runs one step on `page`: a screenshot NN-name.png after it succeeds, or
 * NN-name-failed.png and a clear error (step, page URL, text excerpt) if not.
 */
export async function step(label, page, fn) {
  current = label;
  const t0 = Date.now();
  log(`step ${label}`);
  let info;
  try {
    info = (await fn()) || {};
  } catch (e) {
    const url = page && !page.isClosed() ? page.url() : '(page closed)';
    const text = await excerpt(page);
    const screenshot = await shot(page, `${label}-failed`);
    const err = new StepFailure(
      `${e instanceof StepFailure ? e.message : e.stack || e}\n  at page ${url}\n  page text: ${JSON.stringify(text)}`,
    );
    err.details = { url, text, screenshot, events: page?.events || [] };
    throw err;
  }
  const screenshot = await shot(page, label);
  const rec = { step: label, ms: Date.now() - t0, url: page.url(), screenshot, ...info };
  steps.push(rec);
  log(`  ${JSON.stringify(info)}`);
  return rec;
}

/** Opens `url`, failing the step with the reason if it cannot. */
export async function goto(page, url) {
  try {
    return await page.goto(url, { timeout, waitUntil: 'load' });
  } catch (e) {
    fail(`cannot open ${url}: ${e.message.split('\n')[0]}`);
  }
}

/** Waits until the page's URL satisfies `pred` (a URL → bool), naming `what` on failure. */
export async function waitUrl(page, pred, what, within = timeout) {
  try {
    await page.waitForURL((u) => pred(u.href), { timeout: within, waitUntil: 'load' });
  } catch {
    fail(`expected the page to be ${what}, but it is at ${page.url()}`);
  }
}

/** Waits until `selector` exists and its text satisfies `pred`; returns the text. */
export async function waitText(page, selector, pred, what, within = timeout) {
  const deadline = Date.now() + within;
  let last = null;
  for (;;) {
    try {
      last = await page.locator(selector).first().textContent({ timeout: 1000 });
    } catch {
      last = null;
    }
    if (last !== null && pred(last.trim())) return last.trim();
    if (Date.now() > deadline) {
      fail(
        `expected ${selector} to ${what} within ${within} ms; it ${
          last === null ? 'does not exist' : `reads ${JSON.stringify(last.trim())}`
        }`,
      );
    }
    await page.waitForTimeout(200);
  }
}

/** Fails unless `selector` appears (`what` names it); returns how many match. */
export async function mustHave(page, selector, what) {
  try {
    await page.locator(selector).first().waitFor({ state: 'attached', timeout });
  } catch {
    fail(`expected ${what} (${selector}) on the page`);
  }
  return page.locator(selector).count();
}

/** The trimmed text of `selector`, or null if it is not there. */
export async function text(page, selector) {
  try {
    return ((await page.locator(selector).first().textContent({ timeout: 1000 })) || '').trim();
  } catch {
    return null;
  }
}

/** Ends a successful run: one JSON line {"ok":true,...,"steps":[...]}. */
export function finish(result) {
  finished = true;
  emit({ ok: true, ...result, steps });
}

/**
 * Runs `main` under the total-timeout watchdog. On a failure (or the
 * watchdog) prints {"ok":false,"step":...,"error":...} with what `extra()`
 * adds, and the exit status is non-zero.
 */
export async function run(main, extra = () => ({})) {
  const watchdog = setTimeout(() => {
    if (finished) return;
    emit({ ok: false, step: current, error: `timed out after ${totalTimeout} ms`, steps, ...extra() });
    process.exit(3);
  }, totalTimeout);
  watchdog.unref();
  try {
    fs.mkdirSync(artifacts, { recursive: true });
    await main();
  } catch (e) {
    finished = true;
    const error = e instanceof StepFailure ? e.message : String(e.stack || e);
    emit({ ok: false, step: current, error, ...(e.details || {}), steps, ...extra() });
    log(`FAILED at step ${current}: ${error}`);
    process.exitCode = 1;
  }
}
