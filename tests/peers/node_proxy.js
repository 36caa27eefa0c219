// Legacy (uninstrumented) Node.js HTTP/1.1 proxy for the linking fidelity test: one
// JavaScript thread (libuv's event loop) reads every client request and writes every
// upstream request, so several requests are in flight on one thread.
//
//   node_proxy.js PORT UPSTREAM_PORT
//
// `http` server on 127.0.0.1:PORT, keep-alive to the client (Node's default for HTTP/1.1,
// idle limit 60 s). For each request, `http.request` to 127.0.0.1:UPSTREAM_PORT with the
// same method and path through ONE `new http.Agent({ keepAlive: true })`: idle upstream
// connections are pooled and reused (the agent's default scheduling, 'lifo': the most
// recently freed socket first). No client header is copied: the agent sends only `Host`
// and `Connection: keep-alive` (plus Content-Length for a request body), so a received
// `traceparent` is not forwarded. Answers the upstream's status and body with a
// Content-Length (head and body in one write); 502 when the upstream fails or is too slow.
//
// Bounds: request bodies 1 MiB (413 beyond), upstream bodies 16 MiB (502 beyond), 512
// client connections, 64 upstream sockets (64 idle), 10 s per upstream exchange, 30 s per
// client request. Prints "ready PORT" on stdout once it listens; SIGTERM/SIGINT stop it.
'use strict';
const http = require('http');

const MAX_REQUEST_BODY = 1 << 20;
const MAX_UPSTREAM_BODY = 16 << 20;
const UPSTREAM_TIMEOUT_MS = 10000;

const [portArg, upArg] = process.argv.slice(2);
const port = Number(portArg);
const upstreamPort = Number(upArg);
if (!Number.isInteger(port) || !Number.isInteger(upstreamPort) || process.argv.length !== 4) {
  console.error('usage: node_proxy.js PORT UPSTREAM_PORT');
  process.exit(2);
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 64, maxFreeSockets: 64 });

function reply(res, status, body) {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(status, { 'content-type': 'text/plain', 'content-length': body.length });
  res.end(body);
}

// Reads a stream into one Buffer of at most `limit` bytes; `done(err, buffer)` once.
function collect(stream, limit, done) {
  const chunks = [];
  let size = 0;
  let finished = false;
  const finish = (err, buf) => {
    if (!finished) {
      finished = true;
      done(err, buf);
    }
  };
  stream.on('data', (c) => {
    size += c.length;
    if (size > limit) {
      finish(new Error(`body over ${limit} bytes`));
      stream.destroy();
      return;
    }
    chunks.push(c);
  });
  stream.on('end', () => finish(null, Buffer.concat(chunks, size)));
  stream.on('error', (e) => finish(e));
  stream.on('aborted', () => finish(new Error('aborted')));
}

function forward(req, res, body) {
  const headers = { host: `127.0.0.1:${upstreamPort}` };
  if (body.length > 0) headers['content-length'] = body.length;
  const up = http.request(
    { host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, agent, headers },
    (upRes) => {
      collect(upRes, MAX_UPSTREAM_BODY, (err, upBody) => {
        if (err) reply(res, 502, Buffer.from(`upstream error: ${err.message}\n`));
        else reply(res, upRes.statusCode, upBody);
      });
    },
  );
  up.setTimeout(UPSTREAM_TIMEOUT_MS, () => up.destroy(new Error('upstream timeout')));
  up.on('error', (e) => reply(res, 502, Buffer.from(`upstream error: ${e.message}\n`)));
  up.end(body);
}

const server = http.createServer((req, res) => {
  collect(req, MAX_REQUEST_BODY, (err, body) => {
    if (err) {
      reply(res, 413, Buffer.from(`request body: ${err.message}\n`));
      return;
    }
    forward(req, res, body);
  });
});
server.maxConnections = 512;
server.keepAliveTimeout = 60000;
server.headersTimeout = 30000;
server.requestTimeout = 30000;
server.on('clientError', (err, socket) => socket.destroy());

server.listen(port, '127.0.0.1', () => console.log(`ready ${port}`));

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    agent.destroy();
    server.close();
    process.exit(0);
  });
}
