// A stand-in for tailpass's portal, a protected websocket app and the IdP,
// built only from the DOM contract login.mjs walks (see there). It checks
// login.mjs itself (tests/entry.rs runs one against the other); it is no
// model of how tailpass implements any of it.
//
// Everything listens on 127.0.0.1 (two ports: portal+app, IdP). Prints one
// JSON line {"portal":PORT,"idp":PORT}, then serves until stdin closes.
// AUTO_LOGOUT=1: the IdP's end-session page submits itself; otherwise
// login.mjs has to click "yes" (the oidc-provider default page).

import crypto from 'node:crypto';
import http from 'node:http';

const AUTO_LOGOUT = process.env.AUTO_LOGOUT === '1';
const PAGE = `<!doctype html><html><head><meta charset="utf-8"><title>ws page</title></head><body>
<p>status: <span id="status">connecting</span></p><p>socket: <span id="closed"></span></p>
<script>
var ws = new WebSocket('ws://' + location.host + location.pathname.replace(/[^\\/]*$/, '') + 'ws');
ws.onopen = function () { ws.send('hello'); };
ws.onmessage = function (e) { document.getElementById('status').textContent = 'echo: ' + e.data; };
ws.onclose = function (e) { document.getElementById('closed').textContent = 'closed ' + e.code; };
</script></body></html>`;

const sessions = new Map(); // session id → { user, sockets }
const sessionOf = (req) => sessions.get((req.headers.cookie || '').match(/(?:^|; )sid=(\w+)/)?.[1]);
const sidOf = (req) => (req.headers.cookie || '').match(/(?:^|; )sid=(\w+)/)?.[1];
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
let portalPort;
let idpPort;

function page(res, body, status = 200) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!doctype html><html><head><meta charset="utf-8"><title>mock</title></head><body>${body}</body></html>`);
}

function redirect(res, location, headers = {}) {
  res.writeHead(302, { location, ...headers });
  res.end();
}

function form(req) {
  return new Promise((resolve) => {
    let b = '';
    req.on('data', (c) => (b += c));
    req.on('end', () => resolve(new URLSearchParams(b)));
  });
}

const portal = http.createServer((req, res) => {
  const base = `http://127.0.0.1:${portalPort}`;
  const u = new URL(req.url, base);
  const s = sessionOf(req);
  switch (u.pathname) {
    case '/app/':
      if (!s) return redirect(res, `/auth/login?rd=${encodeURIComponent(base + req.url)}`);
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      return res.end(PAGE);
    case '/auth/login': {
      const rd = encodeURIComponent(u.searchParams.get('rd') || '/auth/');
      return page(
        res,
        `<h1>Sign in</h1><a class="provider" data-provider="test" href="http://127.0.0.1:${idpPort}/authorize?rd=${rd}">Test IdP</a>` +
          `<div id="qr"><svg width="60" height="60"><rect width="60" height="60"/></svg></div>`,
      );
    }
    case '/auth/callback': {
      const id = crypto.randomBytes(12).toString('hex');
      sessions.set(id, { user: u.searchParams.get('user'), sockets: new Set() });
      return redirect(res, u.searchParams.get('rd'), { 'set-cookie': `sid=${id}; Path=/; HttpOnly` });
    }
    case '/auth/':
      if (!s) return redirect(res, '/auth/login');
      return page(
        res,
        `<a class="service" href="/app/">app</a><form method="post" action="/auth/logout"><button id="logout">Sign out</button></form>`,
      );
    case '/auth/whoami':
      return page(res, `<pre id="whoami">${esc(s ? `${s.user}@example.com` : 'nobody')}</pre>`);
    case '/auth/logout':
      if (req.method !== 'POST') return page(res, 'POST only', 405);
      if (s) {
        sessions.delete(sidOf(req));
        // Close frame, code 1008 (policy violation).
        for (const so of s.sockets) so.end(Buffer.from([0x88, 2, 0x03, 0xf0]));
      }
      return redirect(res, `http://127.0.0.1:${idpPort}/end_session`);
    case '/auth/logged-out':
      return page(res, `<p id="logged-out">You are signed out.</p>`);
    default:
      return page(res, 'not found', 404);
  }
});

// The app's websocket: echoes short unfragmented text frames.
portal.on('upgrade', (req, so) => {
  const s = sessionOf(req);
  if (!s) return so.end('HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n');
  const accept = crypto
    .createHash('sha1')
    .update(req.headers['sec-websocket-key'] + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
    .digest('base64');
  so.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
  s.sockets.add(so);
  so.on('error', () => {});
  so.on('data', (d) => {
    if ((d[0] & 0x0f) !== 1 || (d[1] & 0x7f) > 125) return;
    const mask = d.subarray(2, 6);
    const payload = Buffer.from(d.subarray(6, 6 + (d[1] & 0x7f))).map((b, i) => b ^ mask[i % 4]);
    so.write(Buffer.concat([Buffer.from([0x81, payload.length]), payload]));
  });
});

const idp = http.createServer(async (req, res) => {
  const u = new URL(req.url, `http://127.0.0.1:${idpPort}`);
  if (u.pathname === '/authorize' && req.method === 'GET') {
    return page(
      res,
      `<form method="post"><input id="login" name="login"><input type="hidden" name="rd" value="${esc(u.searchParams.get('rd'))}">` +
        `<button id="submit">Sign in</button></form>`,
    );
  }
  if (u.pathname === '/authorize') {
    const f = await form(req);
    return redirect(
      res,
      `http://127.0.0.1:${portalPort}/auth/callback?user=${encodeURIComponent(f.get('login'))}&rd=${encodeURIComponent(f.get('rd'))}`,
    );
  }
  if (u.pathname === '/end_session' && req.method === 'GET') {
    // Shaped like oidc-provider's default: the "yes" button is outside the form.
    return page(
      res,
      `<h1>Sign out?</h1><form id="op.logoutForm" method="post" action="/end_session"><input type="hidden" name="xsrf" value="x"></form>` +
        `<button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>` +
        `<button type="submit" form="op.logoutForm">No, stay signed in</button>` +
        (AUTO_LOGOUT ? `<script>document.forms[0].requestSubmit(document.querySelector('button[value=yes]'))</script>` : ''),
    );
  }
  if (u.pathname === '/end_session') {
    const f = await form(req);
    if (f.get('logout') !== 'yes') return page(res, 'still signed in at the IdP');
    return redirect(res, `http://127.0.0.1:${portalPort}/auth/logged-out`);
  }
  return page(res, 'not found', 404);
});

const listen = (server) => new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
portalPort = await listen(portal);
idpPort = await listen(idp);
process.stdout.write(JSON.stringify({ portal: portalPort, idp: idpPort }) + '\n');
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
