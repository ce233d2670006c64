// A real OpenID Provider (node-oidc-provider) for hwpass's tests, on loopback only.
//
//   tests/oidc/node tests/oidc/provider.mjs PORT CONFIG.json
//
// PORT 0 lets the system choose. Once listening it prints exactly one line on stdout,
// `ready http://127.0.0.1:PORT` (the issuer), and logs requests (method and path, never a query
// or a body) on stderr. tests/oidc/README.md documents the config file, the pages' element ids
// (for a headless browser) and the hostile modes.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const [portArg, configPath] = process.argv.slice(2);
if (portArg === undefined || configPath === undefined || !/^\d+$/.test(portArg)) {
  process.stderr.write('usage: node provider.mjs PORT CONFIG.json\n');
  process.exit(2);
}
const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));

// The provider's clock: real time, or (config `now`, epoch seconds) a clock that starts there
// and runs forward, so the IdP lives on the same timeline as binaries with an injected "now".
// node-oidc-provider reads the time only through Date.now.
const clockOffsetMs = config.now === undefined || config.now === null
  ? 0 : config.now * 1000 - Date.now();
if (clockOffsetMs !== 0) {
  const realNow = Date.now.bind(Date);
  Date.now = () => realNow() + clockOffsetMs;
}
const users = config.users ?? [];
const HOSTILE_MODES = new Set([
  'wrong_audience', 'expired', 'wrong_issuer', 'wrong_nonce', 'bad_signature', 'unknown_key',
]);
let hostile = null;
setHostile(config.hostile ?? null);

function setHostile(mode) {
  if (mode !== null && !HOSTILE_MODES.has(mode)) {
    throw new Error(`unknown hostile mode ${JSON.stringify(mode)}`);
  }
  hostile = mode;
}

// Fresh signing keys at every start (so a restart rotates them): RS256 (the OIDC default) and
// ES256. Private parts stay in this process.
const signingKeys = new Map(); // kid -> { alg, key: KeyObject }
function newKey(type, options, alg) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  const kid = crypto.randomBytes(12).toString('base64url');
  signingKeys.set(kid, { alg, key: privateKey });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}
const jwks = {
  keys: [
    newKey('rsa', { modulusLength: 2048 }, 'RS256'),
    newKey('ec', { namedCurve: 'P-256' }, 'ES256'),
  ],
};
// Never published: the `unknown_key` hostile mode signs with it.
const unpublished = {
  kid: 'hostile-unpublished-key',
  RS256: crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey,
  ES256: crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
};

const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
const unb64 = (s) => JSON.parse(Buffer.from(s, 'base64url').toString('utf8'));

function signJws(header, payload, alg, key) {
  const input = `${b64(header)}.${b64(payload)}`;
  const options = alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key;
  return `${input}.${crypto.sign('sha256', Buffer.from(input), options).toString('base64url')}`;
}

// Turns a genuine ID token into the hostile one the current mode asks for; every result but
// `bad_signature` and `unknown_key` carries a valid signature by a published key.
function makeHostile(jwt, mode, issuer) {
  const [h, p, s] = jwt.split('.');
  const header = unb64(h);
  const payload = unb64(p);
  const now = Math.floor(Date.now() / 1000);
  let { key } = signingKeys.get(header.kid) ?? {};
  switch (mode) {
    case 'wrong_audience': payload.aud = 'hostile-other-client'; break;
    case 'expired': payload.iat = now - 600; payload.exp = now - 300; break;
    case 'wrong_issuer': payload.iss = `${issuer}/hostile`; break;
    case 'wrong_nonce': payload.nonce = 'hostile-nonce'; break;
    case 'bad_signature': {
      const sig = Buffer.from(s, 'base64url');
      sig[sig.length >> 1] ^= 0x01;
      return `${h}.${p}.${sig.toString('base64url')}`;
    }
    case 'unknown_key':
      header.kid = unpublished.kid;
      key = unpublished[header.alg];
      break;
    default: throw new Error(`hostile mode ${mode}`);
  }
  if (!key) throw new Error(`no key for ${header.alg}`);
  return signJws(header, payload, header.alg, key);
}

// --- small HTML pages with stable element ids (tests/oidc/README.md lists them) ------------
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>body{font-family:sans-serif;max-width:28em;margin:2em auto}input,button{display:block;margin:.5em 0;font-size:1em}.error{color:#b00}</style>
</head><body><h1>${esc(title)}</h1>${body}</body></html>`;
}

function loginPage(uid, clientName, error) {
  return page('Sign in', `<p id="client">Sign in to continue to <strong>${esc(clientName)}</strong></p>
${error ? `<p id="error" class="error">${esc(error)}</p>` : ''}
<form id="login-form" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label for="username">Username</label><input id="username" name="username" type="text" required autofocus>
<label for="password">Password</label><input id="password" name="password" type="password" required>
<button id="sign-in" type="submit">Sign in</button>
</form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button id="cancel" type="submit">Cancel</button></form>`);
}

function consentPage(uid, clientName, scopes) {
  return page('Authorize', `<p id="client"><strong>${esc(clientName)}</strong> asks for: <span id="scopes">${esc(scopes.join(' '))}</span></p>
<form method="post" action="/interaction/${esc(uid)}/confirm"><button id="approve" type="submit">Approve</button></form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button id="deny" type="submit">Deny</button></form>`);
}

// --- the provider ---------------------------------------------------------------------------
const findUser = (name) => users.find(
  (u) => u.id === name || u.preferred_username === name || u.email === name,
);

let provider;
let callback;
const server = http.createServer((req, res) => {
  const path = (req.url ?? '/').split('?')[0];
  res.on('finish', () => process.stderr.write(`${req.method} ${path} ${res.statusCode}\n`));
  if (clockOffsetMs !== 0) keepCookiesForTheBrowserSession(res);
  if (path.startsWith('/interaction/')) {
    interaction(req, res, path).catch((e) => fail(res, e));
  } else if (path.startsWith('/__control/')) {
    control(req, res, path).catch((e) => fail(res, e));
  } else {
    callback(req, res);
  }
});

// With a shifted clock, cookie expiry dates would be on the provider's timeline, not the
// browser's (in the past: dropped at once): drop them, so cookies last as long as the browser
// session (each test has its own profile); the provider still expires sessions on its own.
function keepCookiesForTheBrowserSession(res) {
  // At the last moment: node-oidc-provider appends the session's expiry to the header late.
  const { writeHead } = res;
  const strip = (c) => String(c).replace(/;\s*(expires|max-age)=[^;]*/gi, '');
  res.writeHead = function writeHeadWithoutCookieExpiry(...args) {
    const cookies = res.getHeader('set-cookie');
    if (cookies !== undefined) {
      res.setHeader('set-cookie', Array.isArray(cookies) ? cookies.map(strip) : strip(cookies));
    }
    return writeHead.apply(res, args);
  };
}

function fail(res, e) {
  process.stderr.write(`error: ${e?.stack ?? e}\n`);
  if (!res.headersSent) {
    res.writeHead(500, { 'content-type': 'text/html; charset=utf-8' });
    res.end(page('Error', `<pre id="error">${esc(e?.message ?? e)}</pre>`));
  }
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const c of req) {
    size += c.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(c);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function html(res, body) {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(body);
}

async function finishConsent(req, res, details) {
  const { prompt, grantId, session, params } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  if (prompt.details.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  const result = { consent: { grantId: await grant.save() } };
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

async function interaction(req, res, path) {
  const [, , uid, action] = path.split('/');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  const client = await provider.Client.find(details.params.client_id);
  const clientName = client?.clientName ?? details.params.client_id;
  const prompt = details.prompt.name;
  if (req.method === 'GET' && action === undefined) {
    if (prompt === 'login') return html(res, loginPage(uid, clientName));
    if (prompt === 'consent') {
      // Corporate apps are admin-consented: no consent page unless the config asks for one.
      if (!config.consent) return finishConsent(req, res, details);
      return html(res, consentPage(uid, clientName, String(details.params.scope ?? '').split(' ')));
    }
    throw new Error(`prompt ${prompt} is not implemented`);
  }
  if (req.method !== 'POST') throw new Error('method not allowed');
  const form = await readForm(req);
  switch (action) {
    case 'login': {
      if (prompt !== 'login') throw new Error('not at the login step');
      const user = findUser(form.get('username') ?? '');
      if (!user || typeof user.password !== 'string' || !safeEqual(user.password, form.get('password') ?? '')) {
        return html(res, loginPage(uid, clientName, 'Invalid username or password.'));
      }
      return provider.interactionFinished(req, res, { login: { accountId: user.id } }, { mergeWithLastSubmission: false });
    }
    case 'confirm':
      if (prompt !== 'consent') throw new Error('not at the consent step');
      return finishConsent(req, res, details);
    case 'abort':
      return provider.interactionFinished(req, res, {
        error: 'access_denied', error_description: 'End-User aborted interaction',
      }, { mergeWithLastSubmission: false });
    default:
      throw new Error('unknown interaction action');
  }
}

function safeEqual(a, b) {
  const x = crypto.createHash('sha256').update(a).digest();
  const y = crypto.createHash('sha256').update(b).digest();
  return crypto.timingSafeEqual(x, y);
}

// Test control: POST /__control/hostile {"mode": null | "<mode>"}, bearer = config.control_token.
async function control(req, res, path) {
  const token = config.control_token;
  if (!token || !safeEqual(req.headers.authorization ?? '', `Bearer ${token}`)) {
    res.writeHead(401).end();
    return;
  }
  if (req.method === 'POST' && path === '/__control/hostile') {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
    try {
      setHostile(body.mode ?? null);
    } catch (e) {
      res.writeHead(400, { 'content-type': 'text/plain' }).end(e.message);
      return;
    }
    res.writeHead(204).end();
    return;
  }
  res.writeHead(404).end();
}

const devicePages = {
  // The user-code form comes from the provider (it carries the CSRF field `xsrf`); the text
  // input is name="user_code", given id="user-code" here.
  async userCodeInputSource(ctx, form, out, err) {
    let msg = '<p id="prompt">Enter the code displayed on your device</p>';
    if (err && (err.userCode || err.name === 'NoCodeError')) {
      msg = '<p id="error" class="error">The code you entered is incorrect. Try again.</p>';
    } else if (err && err.name === 'AbortedError') {
      msg = '<p id="error" class="error">The sign-in request was interrupted.</p>';
    } else if (err) {
      msg = '<p id="error" class="error">There was an error processing your request.</p>';
    }
    ctx.type = 'html';
    ctx.body = page('Device sign-in', `${msg}
${form.replace('name="user_code"', 'id="user-code" name="user_code"')}
<button id="device-continue" type="submit" form="op.deviceInputForm">Continue</button>`);
  },
  async userCodeConfirmSource(ctx, form, client, deviceInfo, userCode) {
    ctx.type = 'html';
    ctx.body = page('Confirm device', `<p id="client"><strong>${esc(client.clientName ?? client.clientId)}</strong></p>
<p>Check that your device shows this code: <code id="confirm-code">${esc(userCode)}</code></p>
${form}
<button id="device-confirm" type="submit" form="op.deviceConfirmForm">Continue</button>
<button id="device-abort" type="submit" form="op.deviceConfirmForm" name="abort" value="yes">Abort</button>`);
  },
  async successSource(ctx) {
    ctx.type = 'html';
    ctx.body = page('Sign-in complete', '<p id="device-success">Your device is signed in. You can close this page.</p>');
  },
};

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(portArg), '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const ttlDefaults = {
  AccessToken: 300, AuthorizationCode: 60, DeviceCode: 300, Grant: 600, IdToken: 300,
  Interaction: 600, RefreshToken: 600, Session: 600,
};

provider = new Provider(issuer, {
  clients: config.clients ?? [],
  jwks,
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  // Claims by scope; `groups` is a custom claim released with the `groups` scope.
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  // Scope claims go into the ID token itself (the default keeps them for userinfo only).
  conformIdTokenClaims: false,
  async findAccount(ctx, id) {
    const user = users.find((u) => u.id === id);
    if (!user) return undefined;
    return {
      accountId: user.id,
      async claims() {
        return {
          sub: user.id,
          email: user.email,
          email_verified: user.email !== undefined,
          preferred_username: user.preferred_username,
          name: user.name ?? user.preferred_username,
          groups: user.groups ?? [],
        };
      },
    };
  },
  pkce: { required: () => true },
  responseTypes: ['code'],
  ttl: { ...ttlDefaults, ...(config.ttl ?? {}) },
  interactions: { url: (ctx, i) => `/interaction/${i.uid}` },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: { enabled: true, ...devicePages },
    revocation: { enabled: true },
    registration: {
      enabled: Boolean(config.control_token),
      initialAccessToken: config.control_token ?? false,
    },
  },
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = page('Sign-in error', `<pre id="error">${esc(out.error)}</pre>
<pre id="error-description">${esc(out.error_description ?? '')}</pre>`);
  },
});

const originalIssue = provider.IdToken.prototype.issue;
provider.IdToken.prototype.issue = async function issue(options) {
  const jwt = await originalIssue.call(this, options);
  if (options?.use !== 'idtoken' || hostile === null) return jwt;
  return makeHostile(jwt, hostile, issuer);
};
// RFC 8628 `interval` (seconds between polls), which oidc-provider leaves out (clients then
// wait 5 s); tests set it short.
const pollInterval = config.device_poll_interval ?? 1;
provider.use(async (ctx, next) => {
  await next();
  if (ctx.oidc?.route === 'device_authorization' && ctx.status === 200 && ctx.body) {
    ctx.body = { ...ctx.body, interval: pollInterval };
  }
});
callback = provider.callback();
provider.on('server_error', (ctx, e) => process.stderr.write(`server_error: ${e?.stack ?? e}\n`));

process.on('SIGTERM', () => server.close(() => process.exit(0)));
process.stdout.write(`ready ${issuer}\n`);
