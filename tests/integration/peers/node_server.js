// A plain Node.js `http` server (used as the last hop "service C").
// node node_server.js PORT  -> answers every request with "node <method> <url>\n".
'use strict';
const http = require('http');
const port = Number(process.argv[2]);
const server = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    const body = `node ${req.method} ${req.url}\n`;
    res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  });
});
server.listen(port, '127.0.0.1', () => console.log(`node listening on 127.0.0.1:${port}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
