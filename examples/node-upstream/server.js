#!/usr/bin/env node
// A "legacy" Node backend behind hookgate: prints each event and re-verifies it.
//
// hookgate forwards the sender's webhook-* headers and the exact body bytes, so a
// backend can re-check the Standard Webhooks signature with the same secret. Node's
// standard library only. WEBHOOK_SECRET may list several secrets separated by spaces
// (the new one and the old one, while a secret is rotated); a signature made with any
// of them is accepted.
//
//   WEBHOOK_SECRET=whsec_... PORT=9002 node examples/node-upstream/server.js
'use strict';

const crypto = require('node:crypto');
const http = require('node:http');

const SECRETS = (process.env.WEBHOOK_SECRET || '').split(' ').filter(Boolean);
const TOLERANCE_SECONDS = 5 * 60;

// whsec_<base64> (padded or not) is the key's base64; anything else is used as its UTF-8
// bytes, as hookgate reads a secret.
function keyFromSecret(secret) {
  return secret.startsWith('whsec_')
    ? Buffer.from(secret.slice('whsec_'.length), 'base64')
    : Buffer.from(secret, 'utf8');
}

const KEYS = SECRETS.map(keyFromSecret);

// Returns "ok" or why the request is not signed with any of the secrets.
function verify(headers, body) {
  const id = headers['webhook-id'];
  const timestamp = headers['webhook-timestamp'];
  const signatures = headers['webhook-signature'];
  if (!id || !timestamp || !signatures) return 'missing webhook-* headers';
  if (!/^\d+$/.test(timestamp) || Math.abs(Date.now() / 1000 - Number(timestamp)) > TOLERANCE_SECONDS) {
    return 'stale timestamp';
  }
  for (const key of KEYS) {
    const expected = crypto.createHmac('sha256', key).update(`${id}.${timestamp}.`).update(body).digest();
    for (const entry of signatures.split(' ')) {
      const [version, signature] = entry.split(',', 2);
      if (version !== 'v1' || !signature) continue;
      const given = Buffer.from(signature, 'base64');
      if (given.length === expected.length && crypto.timingSafeEqual(given, expected)) return 'ok';
    }
  }
  return 'invalid signature';
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    const verdict = verify(req.headers, body);
    const eventType = req.headers['x-hookgate-event-type'] || '-';
    console.log(
      `node-upstream: ${verdict} ${eventType} webhook-id=${req.headers['webhook-id']} ` +
        `source=${req.headers['x-hookgate-source']} bytes=${body.length}`,
    );
    const answer = JSON.stringify({ received: verdict === 'ok', verdict });
    res.writeHead(verdict === 'ok' ? 200 : 401, { 'content-type': 'application/json' });
    res.end(answer);
  });
});

if (SECRETS.length === 0) {
  console.error('set WEBHOOK_SECRET to the source\'s signing secret');
  process.exit(1);
}
const port = Number(process.env.PORT || 9002);
const host = process.env.HOST || '127.0.0.1';
server.listen(port, host, () => console.log(`node-upstream: listening on http://${host}:${port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
