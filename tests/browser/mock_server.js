'use strict';
// A fake Athena HTTP server for testing assets/dashboard.html without the C
// engine. Node.js built-ins only.
//
// It serves the dashboard at / and the same JSON API as engine/http/http.c, with
// data that changes on its own (a small simulation ticking every 250 ms):
//   GET    /api/metrics  /api/workers  /api/schedules
//   GET    /api/tasks?status=&name=&limit=&offset=   (newest first)
//   GET    /api/tasks/<id>          POST /api/tasks/<id>/requeue
//   DELETE /api/tasks/<id>          (purges a quarantined task)
//   GET    /metrics (Prometheus text)   GET /healthz
//
// Use from a test:
//   const { createMockServer } = require('./mock_server');
//   const mock = createMockServer();
//   const port = await mock.start(0);      // ephemeral port on 127.0.0.1
//   mock.setCluster(true); // the PostgreSQL backend's metrics.cluster and /api/nodes
//   mock.setMode(m);  // 'normal'; 'hang': accept, never answer; 'error': every
//                     // API call answers 500; 'unhealthy': /healthz answers 503
//   await mock.stop();                     // closes every connection
// Or by hand: node tests/browser/mock_server.js [port]  → open the printed URL.

const http = require('http');
const fs = require('fs');
const path = require('path');

const DASHBOARD = path.resolve(__dirname, '..', '..', 'assets', 'dashboard.html');

// Small deterministic PRNG so that runs look alike.
function mulberry32(seed) {
  let a = seed >>> 0;
  return function () {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const NAMES = ['sendEmail', 'resizeImage', 'chargeCard', 'syncInventory', 'generateReport', 'deliverWebhook', 'indexDocument'];
const QUEUES = ['default', 'emails', 'reports', 'webhooks'];
const ERRORS = [
  { code: 'ETIMEDOUT', message: 'activity timed out after 30s' },
  { code: 'EHANDLER', message: 'attempt to index a nil value (field "customer")' },
  { code: 'ECONNREFUSED', message: 'connect ECONNREFUSED 10.0.0.12:5432' },
  { code: 'EWORKERLOST', message: 'worker stopped heartbeating' },
  { code: 'EHANDLER', message: 'payment provider answered 502 Bad Gateway' },
];

function createMockServer(options = {}) {
  const rand = mulberry32(options.seed || 7);
  const pick = (a) => a[Math.floor(rand() * a.length)];
  const startedAt = Date.now();
  const tasks = new Map(); // id -> task
  let seq = 0;
  const counters = { completed: 0, failed: 0, retried: 0, cancelled: 0, quarantined: 0 };
  const completions = []; // timestamps of recent completions, for throughput
  const latency = { qw50: 12, qw95: 45, qw99: 80, run50: 140, run95: 420, run99: 900 };
  const queueDepth = { default: 6, emails: 2, reports: 0, webhooks: 14 };
  const requests = []; // {method, url} log for tests
  let mode = 'normal';
  let opsKey = null; // setKey(k): /api and /metrics answer 401 without `Authorization: Bearer k`
  let server = null;
  let ticker = null;
  let port = 0;
  const sockets = new Set();
  const hung = new Set();

  const workers = [
    { id: 'worker-1', taskQueue: 'default', concurrency: 2 },
    { id: 'worker-2', taskQueue: 'default', concurrency: 2 },
    { id: 'worker-3', taskQueue: 'emails', concurrency: 4 },
    { id: 'worker-4', taskQueue: 'reports', concurrency: 1 },
    { id: 'worker-5', taskQueue: 'webhooks', concurrency: 1 },
  ].map((w, i) => ({
    ...w, status: 'idle', running: [], lastHeartbeat: startedAt, tasksCompleted: 0, tasksFailed: 0,
    memoryKB: 18000 + i * 2300, stopping: i === 4,
  }));

  function newId() { seq += 1; return 'task-' + String(seq).padStart(6, '0'); }

  function addTask(fields) {
    const now = Date.now();
    const t = {
      id: fields.id || newId(),
      name: fields.name || pick(NAMES),
      kind: 'activity',
      status: fields.status || 'pending',
      attempt: fields.attempt === undefined ? 1 : fields.attempt,
      maxAttempts: fields.maxAttempts || 3,
      priority: fields.priority || 0,
      taskQueue: fields.taskQueue || pick(QUEUES),
      createdAt: fields.createdAt || now,
      scheduledAt: fields.createdAt || now,
      startedAt: fields.startedAt,
      completedAt: fields.completedAt,
      workerId: fields.workerId,
      input: fields.input === undefined ? { orderId: Math.floor(rand() * 100000), retries: 3 } : fields.input,
      result: fields.result === undefined ? null : fields.result,
      error: fields.error === undefined ? null : fields.error,
      locked: !!fields.locked,
    };
    tasks.set(t.id, t);
    return t;
  }

  function failedTask(status, ago, extra = {}) {
    const at = Date.now() - ago;
    const e = extra.error || pick(ERRORS);
    return addTask({
      status, attempt: 3, maxAttempts: 3, createdAt: at - 4000, startedAt: at - 900, completedAt: at,
      workerId: pick(workers).id, error: { ...e, retryable: status !== 'quarantined', attempt: 3 }, ...extra,
    });
  }

  // ----- initial data: history, failures and dead letters
  for (let i = 0; i < 30; i++) {
    const at = Date.now() - 60000 + i * 2000;
    addTask({ status: 'completed', createdAt: at - 500, startedAt: at - 200, completedAt: at, result: { ok: true } });
  }
  for (let i = 0; i < 7; i++) failedTask('failed', 240000 - i * 30000);
  failedTask('failed', 5000, {
    name: '<img src=x onerror="window.__xss=1">',
    error: { code: 'EHANDLER', message: '<script>window.__xss=2</script> & "quotes"' },
  });
  failedTask('quarantined', 600000, { id: 'task-dl-1', name: 'chargeCard' });
  failedTask('quarantined', 420000, { id: 'import:csv/2024 #7', name: 'importCsv',
    error: { code: 'EINVAL', message: 'row 17: expected 12 columns, got 11' } });
  failedTask('quarantined', 300000, { id: 'task-locked', name: 'syncInventory', locked: true });
  failedTask('quarantined', 120000, { id: 'task-dl-4', name: 'deliverWebhook',
    error: { code: 'EHANDLER', message: '<b>bold</b> is not HTML here' } });
  counters.failed = 8;
  counters.quarantined = 4;
  counters.completed = 1200;
  counters.retried = 37;
  counters.cancelled = 3;

  const schedules = [
    { id: 'sched-nightly', name: 'nightly-report', cronExpression: '0 2 * * *', timezone: 'UTC', paused: false, totalExecutions: 41, skippedExecutions: 0, periodMs: 86400000 },
    { id: 'sched-sync', name: 'inventory-sync', cronExpression: '*/5 * * * * *', timezone: 'local', paused: false, totalExecutions: 880, skippedExecutions: 3, periodMs: 5000 },
    { id: 'sched-cleanup', name: 'cleanup <tmp>', cronExpression: '0 * * * *', timezone: 'UTC', paused: true, totalExecutions: 12, skippedExecutions: 1, periodMs: 3600000 },
    { id: 'sched-once', name: 'launch-announcement', cronExpression: null, timezone: 'UTC', paused: false, totalExecutions: 0, skippedExecutions: 0, periodMs: 0 },
  ].map((s) => ({
    ...s,
    lastExecution: s.totalExecutions ? Date.now() - Math.floor(s.periodMs / 2) : undefined,
    nextExecution: s.paused ? undefined : Date.now() + (s.periodMs ? Math.ceil(s.periodMs / 2) : 3600000),
  }));

  // ----- simulation
  function tick() {
    const now = Date.now();
    // arrivals
    for (const q of QUEUES) {
      const arrivals = Math.floor(rand() * (q === 'webhooks' ? 4 : 3));
      queueDepth[q] += arrivals;
    }
    // workers finish and start tasks
    for (const w of workers) {
      w.lastHeartbeat = w.id === 'worker-5' ? w.lastHeartbeat : now; // worker-5 is stuck stopping
      if (w.stopping) { w.status = 'stopping'; continue; }
      w.running = w.running.filter((r) => {
        if (now - r.startedAt < 300 + rand() * 1200) return true;
        const failed = rand() < 0.06;
        if (failed) {
          w.tasksFailed++;
          if (rand() < 0.5) counters.retried++;
          else {
            counters.failed++;
            const e = pick(ERRORS);
            addTask({ id: r.id, name: r.name, status: 'failed', attempt: 3, maxAttempts: 3, taskQueue: w.taskQueue,
              createdAt: r.startedAt - 50, startedAt: r.startedAt, completedAt: now, workerId: w.id,
              error: { ...e, retryable: true, attempt: 3 } });
            if (rand() < 0.05) {
              counters.quarantined++;
              tasks.get(r.id).status = 'quarantined';
            }
          }
        } else {
          w.tasksCompleted++;
          counters.completed++;
          completions.push(now);
          if (rand() < 0.2) {
            addTask({ id: r.id, name: r.name, status: 'completed', taskQueue: w.taskQueue, createdAt: r.startedAt - 50,
              startedAt: r.startedAt, completedAt: now, workerId: w.id, result: { ok: true, ms: now - r.startedAt } });
          }
        }
        return false;
      });
      while (w.running.length < w.concurrency && queueDepth[w.taskQueue] > 0) {
        queueDepth[w.taskQueue]--;
        w.running.push({ id: newId(), name: pick(NAMES), startedAt: now });
      }
      w.status = w.running.length ? 'busy' : 'idle';
      w.memoryKB = Math.max(8000, Math.round(w.memoryKB + (rand() - 0.5) * 600));
    }
    if (rand() < 0.01) counters.cancelled++;
    // latency random walk
    const walk = (v, lo, hi) => Math.min(hi, Math.max(lo, v * (0.9 + rand() * 0.2)));
    latency.qw50 = walk(latency.qw50, 2, 200);
    latency.qw95 = Math.max(latency.qw50 * 2.5, walk(latency.qw95, 5, 800));
    latency.qw99 = Math.max(latency.qw95 * 1.4, walk(latency.qw99, 10, 1500));
    latency.run50 = walk(latency.run50, 40, 600);
    latency.run95 = Math.max(latency.run50 * 2, walk(latency.run95, 100, 2000));
    latency.run99 = Math.max(latency.run95 * 1.3, walk(latency.run99, 200, 4000));
    // schedules
    for (const s of schedules) {
      if (!s.paused && s.nextExecution && s.nextExecution <= now) {
        s.totalExecutions++;
        s.lastExecution = s.nextExecution;
        s.nextExecution = s.periodMs ? s.nextExecution + s.periodMs : undefined;
      }
    }
    while (completions.length && now - completions[0] > 60000) completions.shift();
    // bound memory: keep the newest 600 tasks
    if (tasks.size > 600) {
      const sorted = [...tasks.values()].filter((t) => t.status === 'completed').sort((a, b) => a.createdAt - b.createdAt);
      for (const t of sorted.slice(0, tasks.size - 600)) tasks.delete(t.id);
    }
  }

  // ----- API views
  function metrics() {
    const now = Date.now();
    const queues = {};
    let running = 0;
    for (const q of QUEUES) {
      const r = workers.filter((w) => w.taskQueue === q).reduce((n, w) => n + w.running.length, 0);
      running += r;
      queues[q] = { depth: queueDepth[q], running: r, oldestAgeMs: queueDepth[q] ? Math.round(200 + queueDepth[q] * 350 + rand() * 100) : 0 };
    }
    const lastSec = completions.filter((t) => now - t <= 5000).length / 5;
    const lastMin = completions.length;
    const slots = workers.filter((w) => !w.stopping).reduce((n, w) => n + w.concurrency, 0);
    return {
      uptime: now - startedAt,
      workers: {
        total: workers.length,
        idle: workers.filter((w) => w.status === 'idle').length,
        busy: workers.filter((w) => w.status === 'busy').length,
      },
      tasks: {
        queued: QUEUES.reduce((n, q) => n + queueDepth[q], 0),
        scheduled: 4 + Math.floor(rand() * 3),
        running,
        ...counters,
      },
      throughput: { perSecond: Math.round(lastSec), perMinute: lastMin, perHour: lastMin * 60 },
      workload: slots ? +(running / slots).toFixed(4) : 0,
      queues,
      latency: {
        queueWait: { p50: +latency.qw50.toFixed(3), p95: +latency.qw95.toFixed(3), p99: +latency.qw99.toFixed(3) },
        run: { p50: +latency.run50.toFixed(3), p95: +latency.run95.toFixed(3), p99: +latency.run99.toFixed(3) },
      },
      ...(clustered ? { cluster: clusterView() } : {}),
    };
  }
  // The PostgreSQL backend's part (setCluster(true)): getMetrics().cluster and /api/nodes.
  let clustered = false;
  function clusterView() {
    return { node: 'node-a', leader: 'node-a', nodes: 2, tasks: { queued: 3, scheduled: 1, running: 2 },
      throughput: { windowMs: 10000, completed: 12345, perSecond: 1234.5 }, startLatencyMs: { p50: 4.2, p95: 9.8, p99: 17.3 },
      queues: {} };
  }
  function nodesView() {
    const now = Date.now();
    return [
      { nodeId: 'node-a', incarnation: 7, host: 'host-1', pid: 4242, startedAt: now - 3600000, beatAt: now - 400,
        expiresAt: now + 29600, alive: true, queues: ['default', 'emails'], slots: 32, leader: true },
      { nodeId: 'node-<b>', incarnation: 9, host: 'host-2', pid: 77, startedAt: now - 60000, beatAt: now - 45000,
        expiresAt: now - 15000, alive: false, queues: ['default'], slots: 16, leader: false },
    ];
  }
  function workersView() {
    return workers.map((w) => ({
      id: w.id, status: w.status, taskQueue: w.taskQueue, concurrency: w.concurrency,
      running: w.running.map((r) => ({ id: r.id, name: r.name, startedAt: r.startedAt })),
      lastHeartbeat: w.lastHeartbeat, tasksCompleted: w.tasksCompleted, tasksFailed: w.tasksFailed, memoryKB: w.memoryKB,
    }));
  }
  function taskView(t) {
    const o = {
      id: t.id, name: t.name, kind: t.kind, status: t.status, attempt: t.attempt, maxAttempts: t.maxAttempts,
      priority: t.priority, taskQueue: t.taskQueue, createdAt: t.createdAt, scheduledAt: t.scheduledAt,
    };
    if (t.startedAt) o.startedAt = t.startedAt;
    if (t.completedAt) o.completedAt = t.completedAt;
    if (t.workerId) o.workerId = t.workerId;
    o.input = t.input; o.result = t.result; o.error = t.error;
    return o;
  }
  function schedulesView() {
    return schedules.map((s) => {
      const o = { id: s.id, name: s.name, cronExpression: s.cronExpression, timezone: s.timezone, paused: s.paused,
        totalExecutions: s.totalExecutions, skippedExecutions: s.skippedExecutions };
      if (s.lastExecution) o.lastExecution = s.lastExecution;
      if (s.nextExecution) o.nextExecution = s.nextExecution;
      return o;
    });
  }
  function prometheus() {
    const m = metrics();
    const lines = [
      '# HELP athena_uptime_seconds Seconds since the world started.', '# TYPE athena_uptime_seconds gauge',
      `athena_uptime_seconds ${(m.uptime / 1000).toFixed(3)}`,
      '# TYPE athena_workers gauge',
      `athena_workers{status="idle"} ${m.workers.idle}`, `athena_workers{status="busy"} ${m.workers.busy}`,
      `athena_workers{status="total"} ${m.workers.total}`,
      '# TYPE athena_tasks gauge',
      ...['queued', 'scheduled', 'running'].map((k) => `athena_tasks{state="${k}"} ${m.tasks[k]}`),
      '# TYPE athena_tasks_total counter',
      ...['completed', 'failed', 'retried', 'cancelled', 'quarantined'].map((k) => `athena_tasks_total{outcome="${k}"} ${m.tasks[k]}`),
      '# TYPE athena_workload gauge', `athena_workload ${m.workload}`,
      '# TYPE athena_queue_depth gauge',
      ...Object.entries(m.queues).map(([q, v]) => `athena_queue_depth{queue="${q}"} ${v.depth}`),
    ];
    return lines.join('\n') + '\n';
  }

  // ----- HTTP
  function send(res, status, type, body) {
    res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  }
  const json = (res, status, obj) => send(res, status, 'application/json', JSON.stringify(obj));
  const fail = (res, status, code, message) => json(res, status, { ok: false, error: { code, message } });

  function handler(req, res) {
    requests.push({ method: req.method, url: req.url, at: Date.now(), authorization: req.headers.authorization,
      contentType: req.headers['content-type'] });
    if (requests.length > 5000) requests.splice(0, 1000);
    if (mode === 'hang') { hung.add(res); res.on('close', () => hung.delete(res)); return; } // never answer
    const url = new URL(req.url, 'http://mock');
    const p = url.pathname;
    // like a real server with keys (docs/operations.md): /api and /metrics need one
    if (opsKey && (p === '/metrics' || p.startsWith('/api/')) && req.headers.authorization !== 'Bearer ' + opsKey) {
      return fail(res, 401, req.headers.authorization ? 'invalid_key' : 'auth_required', 'the operations surface needs a key');
    }
    if (p === '/' || p === '/index.html') {
      if (req.method !== 'GET' && req.method !== 'HEAD') return fail(res, 405, 'EINVAL', 'method not allowed');
      let html;
      try { html = fs.readFileSync(DASHBOARD, 'utf8'); } catch (e) { return send(res, 500, 'text/plain', 'cannot read ' + DASHBOARD); }
      return send(res, 200, 'text/html; charset=utf-8', html);
    }
    if (mode === 'error') return fail(res, 500, 'EINTERNAL', 'mock server in error mode');
    if (p === '/healthz' && req.method === 'GET') {
      if (mode === 'unhealthy') return send(res, 503, 'text/plain; charset=utf-8', 'no live worker on queue "webhooks" <for 30 s>');
      return send(res, 200, 'text/plain; charset=utf-8', 'ok');
    }
    if (p === '/metrics' && req.method === 'GET') return send(res, 200, 'text/plain; version=0.0.4; charset=utf-8', prometheus());
    if (p === '/api/metrics' && req.method === 'GET') return json(res, 200, metrics());
    if (p === '/api/workers' && req.method === 'GET') return json(res, 200, workersView());
    if (p === '/api/schedules' && req.method === 'GET') return json(res, 200, schedulesView());
    if (p === '/api/nodes' && req.method === 'GET') return json(res, 200, nodesView()); /* asked only with a cluster */
    if (p === '/api/tasks' && req.method === 'GET') {
      const status = url.searchParams.get('status');
      const name = url.searchParams.get('name');
      const limit = url.searchParams.has('limit') ? Number(url.searchParams.get('limit')) : 50;
      const offset = Number(url.searchParams.get('offset') || 0);
      if (!(limit >= 1 && limit <= 1000) || !(offset >= 0)) return fail(res, 400, 'EINVAL', 'limit must be 1-1000, offset >= 0');
      const wanted = status ? status.split(',') : null;
      const list = [...tasks.values()]
        .filter((t) => (!wanted || wanted.includes(t.status)) && (!name || t.name === name))
        .sort((a, b) => (b.completedAt || b.createdAt) - (a.completedAt || a.createdAt) || (a.id < b.id ? 1 : -1))
        .slice(offset, offset + limit)
        .map(taskView);
      return json(res, 200, list);
    }
    // like the real server (docs/operations.md): mutations must say JSON,
    // which a cross-site form cannot without a preflight
    if (p.startsWith('/api/') && req.method !== 'GET' && req.method !== 'HEAD' &&
        !/^application\/json\b/i.test(req.headers['content-type'] || '')) {
      return fail(res, 403, 'cross_site', 'a mutation needs Content-Type: application/json');
    }
    const m = /^\/api\/tasks\/([^/]+)(\/requeue)?$/.exec(p);
    if (m) {
      let id;
      try { id = decodeURIComponent(m[1]); } catch (e) { return fail(res, 400, 'EINVAL', 'bad task id encoding'); }
      const t = tasks.get(id);
      if (!t) return fail(res, 404, 'ENOTFOUND', 'no such task');
      if (m[2]) {
        if (req.method !== 'POST') return fail(res, 405, 'EINVAL', 'method not allowed here');
        if (t.locked) return fail(res, 409, 'ELOCKED', 'the task is held by an operator lock');
        if (t.status !== 'quarantined' && t.status !== 'failed') return fail(res, 409, 'EINVAL', 'the task is not quarantined');
        Object.assign(t, { status: 'pending', attempt: 0, error: null, startedAt: undefined, completedAt: undefined, workerId: undefined, createdAt: Date.now() });
        return json(res, 200, { ok: true });
      }
      if (req.method === 'GET') return json(res, 200, taskView(t));
      if (req.method === 'DELETE') {
        if (t.locked) return fail(res, 409, 'ELOCKED', 'the task is held by an operator lock');
        if (t.status !== 'quarantined') return fail(res, 409, 'EINVAL', 'the task is not quarantined');
        tasks.delete(id);
        return json(res, 200, { ok: true });
      }
      return fail(res, 405, 'EINVAL', 'method not allowed here');
    }
    return fail(res, 404, 'ENOTFOUND', 'no such route');
  }

  function start(listenPort = 0, host = '127.0.0.1') {
    return new Promise((resolve, reject) => {
      server = http.createServer(handler);
      server.keepAliveTimeout = 2000;
      server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
      server.once('error', reject);
      server.listen(listenPort, host, () => {
        port = server.address().port;
        if (!ticker) { ticker = setInterval(tick, 250); ticker.unref(); }
        resolve(port);
      });
    });
  }
  // Stops answering: closes the listener and every open connection.
  function stop() {
    return new Promise((resolve) => {
      if (!server) return resolve();
      const s = server;
      server = null;
      for (const r of hung) { try { r.destroy(); } catch (e) { /* already gone */ } }
      hung.clear();
      for (const sock of sockets) sock.destroy();
      sockets.clear();
      s.close(() => resolve());
    });
  }
  function shutdown() {
    if (ticker) { clearInterval(ticker); ticker = null; }
    return stop();
  }

  return {
    start, stop, shutdown,
    setMode(m) {
      mode = m;
      if (m !== 'hang') { for (const r of hung) { try { r.destroy(); } catch (e) { /* gone */ } } hung.clear(); }
    },
    setKey(k) { opsKey = k; },
    setCluster(on) { clustered = on; },
    get port() { return port; },
    get url() { return `http://127.0.0.1:${port}/`; },
    getTask: (id) => tasks.get(id) && taskView(tasks.get(id)),
    tasksWithStatus: (s) => [...tasks.values()].filter((t) => t.status === s).map(taskView),
    workers: () => workersView(),
    schedules: () => schedulesView(),
    metrics: () => metrics(),
    requests,
  };
}

module.exports = { createMockServer };

if (require.main === module) {
  const port = Number(process.argv[2] || process.env.PORT || 8080);
  const mock = createMockServer();
  mock.start(port).then((p) => {
    console.log(`mock Athena server on http://127.0.0.1:${p}/ (Ctrl-C to stop)`);
  });
  const bye = () => { mock.shutdown().then(() => process.exit(0)); };
  process.on('SIGINT', bye);
  process.on('SIGTERM', bye);
}
