#!/usr/bin/env node
// A scripted stand-in for an Athena gateway, for the Lua client's specs
// (tests/lua/gateway_client_spec.lua). Built-in modules only.
//
//   node tests/gateway/mock_server.js [--https CERT KEY] [--ttl SECONDS]
//
// Listens on 127.0.0.1, port 0, and prints "<port> <controlPort> <pid>" on
// stdout first thing. Without --https the control API shares the gateway's
// listener (controlPort == port); with --https the gateway listener speaks
// TLS with the given certificate and the control API stays plain HTTP on
// its own port.
//
// Every request outside /__mock/ is recorded ({method, path, headers, body,
// t}) and answered with the first queued response whose `method`/`path`
// match (if given), else the default response. A response is {status,
// headers, body (text), delay (ms), close (true: drop the connection
// without answering)}.
//
// Control API:
//   POST /__mock/respond   {responses: [...], default: {...}}  queue / set
//   GET  /__mock/requests  the recorded requests, a JSON array
//   GET  /__mock/stats     {count, inFlight, maxInFlight, queued, tlsErrors}
//   POST /__mock/reset     forget requests and queue, default restored
//   GET  /__mock/freeport  a port that nothing listens on (just closed)
//   POST /__mock/shutdown  answers, then exits
//
// The process also exits when its parent goes away or after --ttl seconds
// (default 300), so a crashed spec cannot leave it behind.
'use strict';

const http = require('http');
const https = require('https');
const fs = require('fs');
const net = require('net');

const args = process.argv.slice(2);
let tls = null;
let ttl = 300;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--https') {
    tls = { cert: fs.readFileSync(args[i + 1]), key: fs.readFileSync(args[i + 2]) };
    i += 2;
  } else if (args[i] === '--ttl') {
    ttl = Number(args[++i]);
  } else {
    process.stderr.write(`mock_server: unknown argument ${args[i]}\n`);
    process.exit(2);
  }
}

const DEFAULT = Object.freeze({
  status: 200,
  headers: { 'content-type': 'application/json; charset=utf-8' },
  body: '{"status":"success","message":"Fetched 0 rows","data":[],"count":null}',
  delay: 0,
});

let dflt = DEFAULT;
let queue = [];
let records = [];
let inFlight = 0;
let maxInFlight = 0;
let tlsErrors = 0; // TLS handshakes the client broke off
const sockets = new Set();

function readBody(req) {
  return new Promise((resolve) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

function sendJson(res, status, value) {
  const text = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function pick(method, path) {
  for (let i = 0; i < queue.length; i++) {
    const r = queue[i];
    if ((r.method === undefined || r.method === method) && (r.path === undefined || r.path === path)) {
      queue.splice(i, 1);
      return r;
    }
  }
  return dflt;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

let shutdownStarted = false;
function shutdown(code) {
  if (shutdownStarted) return;
  shutdownStarted = true;
  for (const s of sockets) s.destroy();
  process.exit(code || 0);
}

async function control(req, res, path) {
  const text = await readBody(req);
  try {
    if (path === '/__mock/respond' && req.method === 'POST') {
      const spec = text ? JSON.parse(text) : {};
      if (Array.isArray(spec.responses)) for (const r of spec.responses) queue.push(r);
      if (spec.default) dflt = spec.default;
      return sendJson(res, 200, { queued: queue.length });
    }
    if (path === '/__mock/requests') return sendJson(res, 200, records);
    if (path === '/__mock/stats') {
      return sendJson(res, 200, { count: records.length, inFlight, maxInFlight, queued: queue.length, tlsErrors });
    }
    if (path === '/__mock/reset' && req.method === 'POST') {
      queue = [];
      records = [];
      dflt = DEFAULT;
      maxInFlight = inFlight;
      return sendJson(res, 200, { ok: true });
    }
    if (path === '/__mock/freeport') return sendJson(res, 200, { port: await freePort() });
    if (path === '/__mock/shutdown' && req.method === 'POST') {
      res.on('finish', () => setImmediate(() => shutdown(0)));
      return sendJson(res, 200, { ok: true });
    }
    return sendJson(res, 404, { error: 'unknown control path' });
  } catch (e) {
    return sendJson(res, 400, { error: String(e && e.message) });
  }
}

async function gateway(req, res, path) {
  inFlight++;
  if (inFlight > maxInFlight) maxInFlight = inFlight;
  let done = false;
  const finish = () => {
    if (!done) {
      done = true;
      inFlight--;
    }
  };
  res.on('finish', finish);
  res.on('close', finish);
  const body = await readBody(req);
  records.push({ method: req.method, path, headers: req.headers, body, t: Date.now() });
  const r = pick(req.method, path);
  const answer = () => {
    if (res.destroyed || res.writableEnded) return finish();
    if (r.close) {
      req.socket.destroy();
      return finish();
    }
    const headers = Object.assign({}, r.headers || {});
    const text = r.body === undefined || r.body === null ? '' : String(r.body);
    headers['content-length'] = Buffer.byteLength(text);
    try {
      res.writeHead(r.status || 200, headers);
      res.end(text);
    } catch (e) {
      finish();
    }
  };
  if (r.delay > 0) setTimeout(answer, r.delay);
  else answer();
}

function handler(isControl) {
  return (req, res) => {
    req.on('error', () => {});
    res.on('error', () => {});
    const path = req.url.split('?')[0];
    if (isControl && path.startsWith('/__mock/')) return control(req, res, path);
    return gateway(req, res, path);
  };
}

function track(server) {
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('tlsClientError', () => {
    tlsErrors++; // a client refusing our certificate
  });
  server.on('clientError', (err, socket) => socket.destroy());
  server.keepAliveTimeout = 30000;
  return server;
}

function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
}

async function main() {
  let port;
  let controlPort;
  if (tls) {
    port = await listen(track(https.createServer(tls, handler(false))));
    controlPort = await listen(track(http.createServer(handler(true))));
  } else {
    port = await listen(track(http.createServer(handler(true))));
    controlPort = port;
  }
  process.stdout.write(`${port} ${controlPort} ${process.pid}\n`);
  const parent = process.ppid;
  setInterval(() => {
    if (process.ppid !== parent) shutdown(0);
  }, 500).unref();
  setTimeout(() => shutdown(0), ttl * 1000).unref();
}

process.on('SIGTERM', () => shutdown(0));
process.on('SIGINT', () => shutdown(0));
main().catch((e) => {
  process.stderr.write(`mock_server: ${e && e.stack}\n`);
  process.exit(1);
});
