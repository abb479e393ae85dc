// HTTPS client peer on Node.js (its own statically linked OpenSSL, driven through
// memory BIOs: the socket I/O is libuv's, not OpenSSL's).
//
//     node tls_node_client.js PORT PATH...
//
// It waits for one line on stdin before the first request (so the test can select
// it by pid before it sends anything).
// One request per PATH, sequentially, each on a new connection (agent: false).
// Prints one JSON line: {"statuses": [...]}.
'use strict';
const https = require('https');

const port = Number(process.argv[2]);
const paths = process.argv.slice(3);

function get(path) {
  return new Promise((resolve, reject) => {
    const req = https.get({host: '127.0.0.1', port, path, agent: false,
                           rejectUnauthorized: false}, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', reject);
    req.setTimeout(20000, () => req.destroy(new Error('timeout')));
  });
}

function stdinLine() {
  return new Promise((resolve) => process.stdin.once('data', () => {
    process.stdin.pause();
    resolve();
  }));
}

(async () => {
  await stdinLine();
  const statuses = [];
  for (const p of paths) statuses.push(await get(p));
  console.log(JSON.stringify({statuses}));
})().catch((e) => { console.error(e); process.exit(1); });
