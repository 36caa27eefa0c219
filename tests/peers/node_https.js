// Legacy (uninstrumented) Node.js HTTPS peer for the end-to-end TLS tests. Node links
// OpenSSL statically and exports its symbols (SSL_read, SSL_write, ...), and drives TLS
// through memory BIOs: the socket I/O happens in libuv, outside the SSL_* calls.
//
//   node_https.js server PORT CERT KEY
//       HTTPS server on 127.0.0.1:PORT (ALPN http/1.1): /missing -> 404, /boom -> 500,
//       anything else -> 200; prints "ready" once it listens.
//   node_https.js get PORT CA PATH...
//       one keep-alive connection to 127.0.0.1:PORT (verified against CA), the PATHs
//       one after the other; prints "ok STATUS bytes=N" per path, exits 0 when every
//       request got an answer.
'use strict';
const fs = require('fs');
const https = require('https');

function serve(port, cert, key) {
  const server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
    const path = req.url.split('?')[0];
    const status = { '/missing': 404, '/boom': 500 }[path] || 200;
    const body = `${status} ${path} pid=${process.pid}\n`;
    res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  });
  server.listen(port, '127.0.0.1', () => console.log('ready'));
}

function get(port, ca, paths) {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1, ca: fs.readFileSync(ca) });
  const next = (i) => {
    if (i >= paths.length) {
      agent.destroy();
      return;
    }
    const req = https.get({ host: '127.0.0.1', port, path: paths[i], agent, timeout: 10000,
      headers: { 'user-agent': 'ghostwire-node-client' } }, (res) => {
      let n = 0;
      res.on('data', (c) => { n += c.length; });
      res.on('end', () => {
        console.log(`ok ${res.statusCode} bytes=${n}`);
        next(i + 1);
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => {
      console.log(`err ${e.message}`);
      process.exitCode = 1;
      agent.destroy();
    });
  };
  next(0);
}

const [mode, port, a, b, ...rest] = process.argv.slice(2);
if (mode === 'server' && b) {
  serve(Number(port), a, b);
} else if (mode === 'get' && a && b) {
  get(Number(port), a, [b, ...rest]);
} else {
  console.error('usage: node_https.js server PORT CERT KEY | get PORT CA PATH...');
  process.exit(2);
}
