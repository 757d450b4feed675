'use strict';
// Browser test of assets/dashboard.html: starts mock_server.js on 127.0.0.1
// (ephemeral port), drives Debian's headless Chromium through playwright-core
// and checks what an operator would see. Run with `node dashboard_test.js`
// (or tests/browser/run.sh, which installs what is missing first).
//
// Environment: CHROMIUM=/path/to/chromium (default /usr/bin/chromium),
// SCREENSHOT=path (default tests/browser/dashboard.png).

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');
const { createMockServer } = require('./mock_server');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = process.env.SCREENSHOT || path.join(__dirname, 'dashboard.png');
const SCREENSHOT_NARROW = path.join(__dirname, 'dashboard-narrow.png');
const WATCHDOG_MS = 50000;

let mock, port, context, page, profileDir;
const pageErrors = [];
const consoleErrors = [];
const foreignRequests = [];
let expectNetworkErrors = false;

// Everything must be over well before run.sh's 60 s budget.
const watchdog = setTimeout(() => {
  console.error(`# watchdog: the browser test took longer than ${WATCHDOG_MS / 1000} s`);
  process.exitCode = 1;
  cleanup().finally(() => process.exit(1));
}, WATCHDOG_MS);
watchdog.unref();

async function cleanup() {
  try { if (context) await context.close(); } catch (e) { /* already closed */ }
  context = null;
  try { if (mock) await mock.shutdown(); } catch (e) { /* already stopped */ }
  if (profileDir) { fs.rmSync(profileDir, { recursive: true, force: true }); profileDir = null; }
}

function rows(table) {
  return page.locator(`#${table} tbody tr[data-key]`);
}
async function tableTexts(table) {
  return page.$$eval(`#${table} tbody tr[data-key]`, (trs) => trs.map((tr) => ({
    key: tr.dataset.key,
    cells: Array.from(tr.cells).map((c) => c.textContent.replace(/\s+/g, ' ').trim()),
  })));
}
// Counts pixels of a canvas that are close to an RGB colour.
async function colouredPixels(canvasId, rgb) {
  return page.evaluate(([id, [r, g, b]]) => {
    const c = document.getElementById(id);
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i + 3] > 200 && Math.abs(d[i] - r) < 40 && Math.abs(d[i + 1] - g) < 40 && Math.abs(d[i + 2] - b) < 40) n++;
    }
    return n;
  }, [canvasId, rgb]);
}
async function bannerVisible() {
  // shown, and on screen even when the page is scrolled down
  return page.evaluate(() => {
    const b = document.getElementById('banner');
    const r = b.getBoundingClientRect();
    return !b.hidden && r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight;
  });
}

describe('Athena dashboard (assets/dashboard.html) against the mock server', { timeout: WATCHDOG_MS }, () => {
  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM} (apt-get install chromium)`);
    mock = createMockServer();
    port = await mock.start(0, '127.0.0.1');
    profileDir = fs.mkdtempSync(path.join(os.tmpdir(), 'athena-dash-profile-'));
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
      viewport: { width: 1440, height: 900 },
      timeout: 20000,
    });
    page = context.pages()[0] || await context.newPage();
    page.setDefaultTimeout(8000);
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => {
      if (m.type() !== 'error' || expectNetworkErrors) return;
      // the refused requeue below answers 409 on purpose
      if (/status of 409/.test(m.text()) && /\/api\/tasks\/task-locked\/requeue$/.test(m.location().url)) return;
      consoleErrors.push(`${m.text()} (${m.location().url})`);
    });
    page.on('request', (r) => {
      const u = r.url();
      if (!u.startsWith(`http://127.0.0.1:${port}/`) && !u.startsWith('data:')) foreignRequests.push(u);
    });
    await page.goto(mock.url, { waitUntil: 'load' });
  });

  after(async () => {
    clearTimeout(watchdog);
    await cleanup();
  });

  it('is a self-contained page with a viewport meta tag', async () => {
    assert.match(await page.title(), /Athena/);
    const vp = await page.getAttribute('meta[name="viewport"]', 'content');
    assert.match(vp, /width=device-width/);
    const html = fs.readFileSync(path.join(__dirname, '..', '..', 'assets', 'dashboard.html'), 'utf8');
    assert.doesNotMatch(html, /<(script|link|img)[^>]+(src|href)\s*=\s*["']?(https?:)?\/\//i, 'no external resources');
    assert.doesNotMatch(html, /\.innerHTML\s*=|insertAdjacentHTML|outerHTML\s*=|document\.write/, 'no HTML injection APIs');
  });

  it('fills the header, cards and tables from the API', async () => {
    await page.waitForFunction(() => document.querySelectorAll('#workers-table tbody tr[data-key]').length > 0);
    await page.waitForFunction(() => document.querySelectorAll('#deadletters-table tbody tr[data-key]').length > 0);
    await page.waitForFunction(() => document.querySelectorAll('#schedules-table tbody tr[data-key]').length > 0);

    assert.equal((await page.textContent('#health')).trim(), 'Healthy');
    assert.match(await page.textContent('#uptime'), /^\d+(s|m \d+s|h \d+m|d \d+h)$/);
    assert.ok(await page.isHidden('#banner'), 'no banner while connected');

    // cards
    const completed = Number((await page.textContent('[data-card="completed"] .value')).replace(/[^\d]/g, ''));
    assert.ok(completed >= 1200, `completed card shows ${completed}`);
    assert.equal((await page.textContent('[data-card="workers"] .value')).trim(), '5');
    assert.match(await page.textContent('[data-card="workers"] .sub'), /busy .* idle/);
    assert.match(await page.textContent('[data-card="wait"] .value'), /ms|s/);

    // queues: every fake queue, with depth/running/oldest columns
    const queues = await tableTexts('queues-table');
    assert.deepEqual(queues.map((q) => q.key), ['default', 'emails', 'reports', 'webhooks']);
    for (const q of queues) assert.match(q.cells[1], /^\d+$/);

    // workers: ids, colored status badges, running count "n / concurrency", memory
    const workers = await tableTexts('workers-table');
    assert.deepEqual(workers.map((w) => w.key), mock.workers().map((w) => w.id));
    // one snapshot of text, class and colour, taken in one task of the page: the
    // table is redrawn on every poll, and $$eval queries the elements and runs its
    // function in two steps, so a redraw between them left detached badges, whose
    // computed colour is '' (seen in CI: all five badges with colour '')
    const badges = await page.evaluate(() => Array.from(document.querySelectorAll('#workers-table tbody .badge'),
      (b) => [b.textContent, b.className, getComputedStyle(b).backgroundColor]));
    assert.ok(badges.some(([t, c]) => t === 'stopping' && /warn/.test(c)), 'worker-5 shows a "stopping" badge');
    assert.ok(badges.every(([t]) => ['idle', 'busy', 'stopping', 'stopped'].includes(t)));
    const bgColors = new Set(badges.map(([, , bg]) => bg));
    assert.ok(bgColors.size >= 2, `badges are colored by status (${JSON.stringify(badges)})`);
    const w1 = workers.find((w) => w.key === 'worker-3');
    assert.match(w1.cells[3], /^\d+ \/ 4/);
    assert.match(w1.cells[6], /MB|KB/);

    // recent failures: newest 20 of status=failed, with error code + message
    const failures = await tableTexts('failures-table');
    // (the mock keeps failing tasks, so compare with what it has now loosely)
    const mockFailedIds = new Set(mock.tasksWithStatus('failed').map((t) => t.id));
    assert.ok(failures.length >= 8 && failures.length <= 20, `${failures.length} failure rows`);
    assert.ok(failures.every((f) => mockFailedIds.has(f.key)), 'every row is a failed task');
    const times = await page.$$eval('#failures-table tbody tr[data-key] td:first-child span[title]', (s) => s.map((x) => Date.parse(x.title)));
    assert.ok(times.every((t, i) => i === 0 || t <= times[i - 1]), 'newest first');
    assert.ok(failures.some((f) => /ETIMEDOUT|EHANDLER|ECONNREFUSED|EWORKERLOST/.test(f.cells[3])));
    assert.ok(failures.every((f) => /^\d+\/\d+$/.test(f.cells[2])), 'attempt column shows n/max');
    assert.ok(failures.every((f) => f.cells[1].includes(f.key)), 'task column shows the id');

    // dead letters: all quarantined tasks, each with Requeue and Purge
    const dead = await tableTexts('deadletters-table');
    const quarantined = new Set(mock.tasksWithStatus('quarantined').map((t) => t.id));
    for (const id of ['task-dl-1', 'import:csv/2024 #7', 'task-locked', 'task-dl-4']) {
      assert.ok(dead.some((d) => d.key === id), `dead letter ${id} listed`);
    }
    assert.ok(dead.every((d) => quarantined.has(d.key)), 'every row is a quarantined task');
    assert.ok(dead.every((d) => /Requeue/.test(d.cells[4]) && /Purge/.test(d.cells[4])));

    // schedules
    const sch = await tableTexts('schedules-table');
    assert.deepEqual(sch.map((s) => s.key), mock.schedules().map((s) => s.id));
    const nightly = sch.find((s) => s.key === 'sched-nightly');
    assert.equal(nightly.cells[1], '0 2 * * *');
    assert.ok(sch.some((s) => /paused/.test(s.cells[3])));
    assert.ok(sch.some((s) => /one-off/.test(s.cells[1])));
  });

  it('inserts server strings as text, never as HTML', async () => {
    const failures = await page.textContent('#failures-table tbody');
    assert.ok(failures.includes('<img src=x onerror="window.__xss=1">'), 'the task name shows literally');
    assert.ok(failures.includes('<script>window.__xss=2</script> & "quotes"'), 'the error message shows literally');
    assert.ok((await page.textContent('#deadletters-table tbody')).includes('<b>bold</b> is not HTML here'));
    assert.ok((await page.textContent('#schedules-table tbody')).includes('cleanup <tmp>'));
    assert.equal(await page.$$eval('main img, main script, main b', (n) => n.length), 0);
    assert.equal(await page.evaluate(() => window.__xss), undefined);
  });

  it('draws both charts after a few polls', async () => {
    await page.waitForFunction(() => window.athenaDashboard && window.athenaDashboard.sampleCount >= 4, null, { timeout: 10000 });
    await page.waitForTimeout(100);
    const green = await colouredPixels('chart-throughput', [31, 157, 85]);   // completed/s line
    const blue = await colouredPixels('chart-latency', [37, 99, 235]);       // queue wait line
    const orange = await colouredPixels('chart-latency', [232, 89, 12]);     // run time line
    // a few seconds of a 5-minute window: short lines, but clearly there
    assert.ok(green >= 5, `throughput line drawn (${green} px)`);
    assert.ok(blue >= 5, `queue-wait line drawn (${blue} px)`);
    assert.ok(orange >= 5, `run-time line drawn (${orange} px)`);
    // axis labels: some dark-grey text pixels at the left of the plot
    const grey = await colouredPixels('chart-throughput', [107, 118, 134]);
    assert.ok(grey > 20, `axis labels drawn (${grey} px)`);
    const legend = await page.textContent('#legend-latency');
    assert.match(legend, /queue wait p50.*ms/);
  });

  it('takes screenshots for a human to look at', async () => {
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    assert.ok(fs.statSync(SCREENSHOT).size > 10000);
    await page.setViewportSize({ width: 420, height: 900 });
    await page.waitForTimeout(300);
    await page.evaluate(() => window.scrollTo(0, 0));
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `no horizontal page scroll on a phone (overflow ${overflow}px)`);
    await page.screenshot({ path: SCREENSHOT_NARROW, fullPage: true });
    await page.setViewportSize({ width: 1440, height: 900 });
  });

  it('shows the cluster\'s nodes only on the PostgreSQL backend', async () => {
    assert.ok(await page.isHidden('#nodes-section'), 'no nodes panel without a cluster');
    assert.ok(!mock.requests.some((r) => r.url === '/api/nodes'), 'no /api/nodes request without a cluster');
    mock.setCluster(true);
    await page.waitForFunction(() => document.querySelectorAll('#nodes-table tbody tr[data-key]').length === 2);
    assert.ok(await page.isVisible('#nodes-section'));
    const nodes = await tableTexts('nodes-table');
    assert.deepEqual(nodes.map((n) => n.key), ['7', '9']);
    assert.equal(nodes[0].cells[0], 'node-a');
    assert.match(nodes[0].cells[1], /leader/);
    assert.equal(nodes[1].cells[0], 'node-<b>'); // as text
    assert.match(nodes[1].cells[1], /lost/);
    assert.equal(nodes[0].cells[4], 'default, emails');
    const hint = await page.textContent('#nodes-hint');
    assert.match(hint, /1,235 tasks\/s over 10 s/);
    assert.match(hint, /p50 4 ms, p99 17 ms/);
    assert.match(hint, /leader node-a/);
    mock.setCluster(false);
  });

  it('opens task details from a task id', async () => {
    const id = 'task-dl-1';
    await page.click(`#deadletters-table button.linklike[data-task-id="${id}"]`);
    await page.waitForSelector('#task-dialog[open]');
    await page.waitForFunction(() => document.querySelector('#task-dialog-body dl'));
    const body = await page.textContent('#task-dialog-body');
    assert.ok(body.includes(id));
    assert.ok(body.includes('orderId'), 'input JSON shown');
    await page.click('#task-dialog-close');
    await page.waitForSelector('#task-dialog', { state: 'hidden' });
  });

  it('requeues a dead letter: the row goes and the server reports it pending', async () => {
    const id = 'import:csv/2024 #7'; // needs URL-encoding
    assert.equal(mock.getTask(id).status, 'quarantined');
    const row = page.locator('#deadletters-table tbody tr[data-key]', { has: page.locator(`button[data-task-id="${id}"]`) });
    await row.getByRole('button', { name: 'Requeue' }).click();
    await page.waitForFunction((tid) => !Array.from(document.querySelectorAll('#deadletters-table tbody tr[data-key]')).some((tr) => tr.dataset.key === tid), id, { timeout: 4000 });
    assert.equal(mock.getTask(id).status, 'pending');
    assert.ok(mock.requests.some((r) => r.method === 'POST' && r.url === '/api/tasks/import%3Acsv%2F2024%20%237/requeue'));
    const fromApi = await page.evaluate((u) => fetch(u).then((r) => r.json()), '/api/tasks/' + encodeURIComponent(id));
    assert.equal(fromApi.status, 'pending');
    assert.match(await page.textContent('#panel-deadletters [data-note]'), /Requeued/);
    // it stays gone after further polls
    await page.waitForTimeout(1300);
    assert.ok(!(await tableTexts('deadletters-table')).some((d) => d.key === id));
  });

  it('shows a refused requeue inline and keeps the row', async () => {
    const id = 'task-locked';
    const row = page.locator('#deadletters-table tbody tr[data-key="task-locked"]');
    await row.getByRole('button', { name: 'Requeue' }).click();
    const err = page.locator('#deadletters-table tbody tr[data-key="task-locked"] [data-row-error]');
    await err.waitFor();
    const text = await err.textContent();
    assert.match(text, /409/);
    assert.match(text, /ELOCKED/);
    assert.match(text, /operator lock/);
    assert.equal(mock.getTask(id).status, 'quarantined');
    await page.waitForTimeout(1200); // survives a poll
    assert.equal(await err.count(), 1);
  });

  it('purges a dead letter after a confirming second click', async () => {
    const id = 'task-dl-4';
    const purge = page.locator(`#deadletters-table tbody tr[data-key="${id}"] button[data-action="purge"]`);
    await purge.click();
    await page.waitForFunction((tid) => {
      const b = document.querySelector(`#deadletters-table tbody tr[data-key="${tid}"] button[data-action="purge"]`);
      return b && /Confirm/.test(b.textContent);
    }, id);
    assert.ok(mock.getTask(id), 'nothing deleted on the first click');
    await purge.click();
    await page.waitForFunction((tid) => !document.querySelector(`#deadletters-table tbody tr[data-key="${tid}"]`), id, { timeout: 4000 });
    assert.equal(mock.getTask(id), undefined);
    assert.ok(mock.requests.some((r) => r.method === 'DELETE' && r.url === `/api/tasks/${id}`));
  });

  it('shows the disconnected banner when the server stops answering, and recovers', async () => {
    assert.equal(pageErrors.length, 0, `no page errors: ${pageErrors.join('; ')}`);
    assert.equal(consoleErrors.length, 0, `no console errors while connected: ${consoleErrors.join('; ')}`);
    expectNetworkErrors = true;
    // 1. the server goes away (connection refused)
    await mock.stop();
    await page.waitForFunction(() => !document.getElementById('banner').hidden, null, { timeout: 5000 });
    assert.ok(await bannerVisible());
    assert.match(await page.textContent('#banner'), /Disconnected/);
    assert.match(await page.textContent('#health'), /Disconnected/);
    assert.ok((await tableTexts('workers-table')).length > 0, 'last data stays on screen');
    await page.screenshot({ path: SCREENSHOT.replace(/\.png$/, '-disconnected.png') });
    // 2. it comes back on the same port: the banner goes away by itself
    await mock.start(port, '127.0.0.1');
    await page.waitForFunction(() => document.getElementById('banner').hidden, null, { timeout: 8000 });
    assert.equal((await page.textContent('#health')).trim(), 'Healthy');
    // 3. the server accepts connections but never answers
    mock.setMode('hang');
    await page.waitForFunction(() => !document.getElementById('banner').hidden, null, { timeout: 8000 });
    assert.match(await page.textContent('#banner'), /Disconnected.*no answer/s);
    mock.setMode('normal');
    await page.evaluate(() => window.athenaDashboard.pollNow());
    await page.waitForFunction(() => document.getElementById('banner').hidden, null, { timeout: 8000 });
    assert.equal(pageErrors.length, 0, `no page errors: ${pageErrors.join('; ')}`);
  });

  it('reports an unhealthy server and API errors', async () => {
    mock.setMode('unhealthy');
    await page.waitForFunction(() => /Unhealthy/.test(document.getElementById('health').textContent), null, { timeout: 4000 });
    assert.match(await page.textContent('#health'), /no live worker on queue "webhooks" <for 30 s>/);
    assert.ok(await page.isHidden('#banner'), 'the API still answers: no banner');
    mock.setMode('error');
    await page.waitForFunction(() => !document.getElementById('banner').hidden, null, { timeout: 4000 });
    assert.match(await page.textContent('#banner'), /API error.*EINTERNAL/s);
    assert.match(await page.textContent('#panel-workers [data-error]'), /500/);
    mock.setMode('normal');
    await page.waitForFunction(() => document.getElementById('banner').hidden && document.getElementById('health').textContent.trim() === 'Healthy', null, { timeout: 8000 });
    assert.ok(await page.isHidden('#panel-workers [data-error]'));
  });

  it('asks for a key on a server with keys, then sends it from #key= on every request', async () => {
    expectNetworkErrors = true; // the 401s log console errors
    mock.setKey('s3cret key');
    await page.evaluate(() => window.athenaDashboard.pollNow());
    await page.waitForFunction(() => !document.getElementById('banner').hidden, null, { timeout: 4000 });
    assert.match(await page.textContent('#banner'), /Key needed.*#key=/s);
    await page.goto('about:blank'); // a fresh load, as opening the link is (not a same-page hash change)
    await page.goto(mock.url + '#key=' + encodeURIComponent('s3cret key'), { waitUntil: 'load' });
    await page.waitForFunction(() => document.getElementById('banner').hidden, null, { timeout: 8000 });
    assert.equal(await page.evaluate(() => location.hash), '', 'the key leaves the address bar');
    // wait for a request the poll sends and its answer (the banner is hidden
    // already, so waiting for that returned before the poll's requests came)
    const t0 = Date.now();
    const sent = page.waitForRequest((r) => new URL(r.url()).pathname.startsWith('/api/'), { timeout: 4000 });
    await page.evaluate(() => window.athenaDashboard.pollNow());
    await (await sent).response();
    const api = mock.requests.filter((r) => r.at >= t0 && r.url.startsWith('/api/'));
    assert.ok(api.length > 0);
    assert.ok(api.every((r) => r.authorization === 'Bearer s3cret key'), 'every /api request carries the key');
    // a reload keeps it (sessionStorage), and a mutation carries it with its JSON type
    await page.reload({ waitUntil: 'load' });
    await page.waitForFunction(() => document.getElementById('banner').hidden, null, { timeout: 8000 });
    const pageSent = mock.requests.slice();
    const status = await page.evaluate(() => fetch('/api/tasks/nope/requeue', { method: 'POST' }).then((r) => r.status));
    assert.equal(status, 401, 'a request without the key is refused');
    mock.setKey(null);
    expectNetworkErrors = false;
    const mutations = pageSent.filter((r) => r.method !== 'GET');
    assert.ok(mutations.length >= 2, 'the requeue and purge tests above sent mutations');
    assert.ok(mutations.every((r) => /^application\/json/.test(r.contentType || '')), 'every mutation the page sent said JSON');
  });

  it('loads nothing from other origins', () => {
    assert.deepEqual(foreignRequests, []);
  });
});
