#!/usr/bin/env node
// Interoperability test: the published npm client @xylex-group/athena 0.2.1
// against a running Athena gateway (GATEWAY.md §4, §8), through nothing but
// its documented builder, createClient(url, key).from(table).
//
//   node tests/gateway/npm_interop.mjs [BASE_URL [KEY [READ_KEY]]]
//
// Arguments fall back to ATHENA_GATEWAY_URL, ATHENA_GATEWAY_KEY (a key with
// rights "*") and ATHENA_GATEWAY_READ_KEY (a key with only gateway.fetch;
// its checks are skipped when absent). The package is resolved from the
// current directory's node_modules (or ATHENA_NPM_PREFIX's), so run it from
// the directory where `npm install @xylex-group/athena@0.2.1` ran
// (tests/gateway/run_npm_interop.sh does that).
//
// The database must hold the §8 fixture, freshly created:
//   users(id PK, name NOT NULL, email UNIQUE, age, active BOOLEAN) =
//   (1,'Frodo','frodo@shire',50,true), (2,'Bilbo','bilbo@shire',111,true),
//   (3,'Sam',NULL,38,false)
// The script changes it (rows 10..13 come and go, names of 1 and 3 change).
//
// 0.2.1's quirks this script follows on purpose:
// - filters come first: update()/delete() return a thenable without filter
//   methods, so `.eq(...)` precedes them; select() returns a promise;
// - there is no order() in 0.2.1's builder: reads rely on the server's
//   primary-key order for fetches without sort_by (§3.3);
// - `data` is the whole response body: rows are at data.data, the count at
//   data.count, affected rows at data.affected_rows;
// - `error` is body.error ?? body.message, so a success carries the
//   message ("Fetched 2 rows") as `error`: apps (and this script) test
//   `status`;
// - delete() throws before sending unless a filter or resourceId is given.
//
// Every check is an assertion (node:assert/strict); the first failure ends
// the run with exit status 1 and a message naming the step, the request
// shape and the whole result.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const PKG = '@xylex-group/athena';
const PKG_VERSION = '0.2.1';

const baseUrl = process.argv[2] ?? process.env.ATHENA_GATEWAY_URL;
const key = process.argv[3] ?? process.env.ATHENA_GATEWAY_KEY;
const readKey = process.argv[4] ?? process.env.ATHENA_GATEWAY_READ_KEY;
if (!baseUrl || !key) {
  console.error('usage: node npm_interop.mjs BASE_URL KEY [READ_KEY]' +
    ' (or ATHENA_GATEWAY_URL, ATHENA_GATEWAY_KEY, ATHENA_GATEWAY_READ_KEY)');
  process.exit(2);
}

// The published package's own ESM entry ("exports"["."].import), loaded
// from the install directory: ESM resolution ignores NODE_PATH.
async function loadPackage() {
  const prefix = process.env.ATHENA_NPM_PREFIX ?? process.cwd();
  const dir = path.join(prefix, 'node_modules', ...PKG.split('/'));
  let manifest;
  try {
    manifest = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8'));
  } catch (e) {
    throw new Error(`cannot read ${PKG} in ${dir} (run npm install ${PKG}@${PKG_VERSION} there): ${e.message}`);
  }
  assert.equal(manifest.version, PKG_VERSION, `${PKG} in ${dir} is ${manifest.version}, not ${PKG_VERSION}`);
  const entry = manifest.exports?.['.']?.import ?? manifest.module ?? manifest.main;
  const mod = await import(pathToFileURL(path.join(dir, entry)).href);
  assert.equal(typeof mod.createClient, 'function', `${PKG} exports no createClient`);
  return mod;
}

const { createClient } = await loadPackage();
const athena = createClient(baseUrl, key);

let step = '(start)';
let passed = 0;

function show(v) {
  return JSON.stringify(v, null, 2);
}

// A successful 0.2.1 result: status 200 and our envelope as `data` (§4).
// Returns the rows.
function okRows(res, what = step) {
  assert.equal(typeof res, 'object', `${what}: no result object`);
  assert.equal(res.status, 200, `${what}: expected status 200, got ${res.status}: ${show(res)}`);
  const body = res.data;
  assert.ok(body && typeof body === 'object' && !Array.isArray(body),
    `${what}: data (the whole body) is not an object: ${show(res)}`);
  assert.equal(body.status, 'success', `${what}: body.status is not "success": ${show(body)}`);
  assert.ok(Array.isArray(body.data), `${what}: rows (data.data) are not an array: ${show(body)}`);
  assert.ok(!('error' in body), `${what}: a success body has an error key: ${show(body)}`);
  // the 0.2.1 quirk: `error` carries the success message
  assert.equal(res.error, body.message, `${what}: 0.2.1 reports body.message as error on success`);
  return body.data;
}

// A refused 0.2.1 result: the given status, our error envelope, 0.2.1's
// `error` a non-empty string.
function refused(res, status, code, what = step) {
  assert.equal(res.status, status, `${what}: expected status ${status}, got ${res.status}: ${show(res)}`);
  const body = res.data;
  assert.ok(body && typeof body === 'object', `${what}: error body is not JSON: ${show(res)}`);
  assert.equal(body.status, 'error', `${what}: body.status is not "error": ${show(body)}`);
  assert.equal(body.code, code, `${what}: expected code ${code}: ${show(body)}`);
  assert.equal(typeof res.error, 'string', `${what}: 0.2.1 error is not a string: ${show(res)}`);
  assert.ok(res.error.length > 0, `${what}: 0.2.1 error is empty`);
  assert.equal(res.error, body.error, `${what}: 0.2.1 error is not the body's error sentence`);
  return body;
}

function mutated(res, n, what = step) {
  const rows = okRows(res, what);
  assert.equal(res.data.affected_rows, n, `${what}: affected_rows is not ${n}: ${show(res.data)}`);
  assert.equal(res.data.count, n, `${what}: count is not ${n}: ${show(res.data)}`);
  return rows;
}

async function check(name, fn) {
  step = name;
  await fn();
  passed++;
  console.log(`ok ${passed} - ${name}`);
}

// All rows, every column, nulls kept (order by primary key, §3.3).
async function table() {
  const res = await athena.from('users').select('*', { stripNulls: false });
  return okRows(res, `${step} (re-reading users)`);
}

async function byId(id) {
  const res = await athena.from('users').eq('id', id).select('*', { stripNulls: false });
  const rows = okRows(res, `${step} (re-reading id ${id})`);
  assert.ok(rows.length <= 1, `${step}: id ${id} matched ${rows.length} rows`);
  return rows[0] ?? null;
}

const FRODO = { id: 1, name: 'Frodo', email: 'frodo@shire', age: 50, active: true };
const BILBO = { id: 2, name: 'Bilbo', email: 'bilbo@shire', age: 111, active: true };
const SAM = { id: 3, name: 'Sam', email: null, age: 38, active: false };

async function main() {
  // ---- reads ----------------------------------------------------------
  await check('select * returns the fixture in key order, nulls stripped by default', async () => {
    const res = await athena.from('users').select();
    const rows = okRows(res);
    assert.deepEqual(rows, [FRODO, BILBO, { id: 3, name: 'Sam', age: 38, active: false }]);
    assert.equal(res.data.message, 'Fetched 3 rows');
    assert.equal(res.data.count, null);
  });

  await check('select with stripNulls:false keeps null values', async () => {
    assert.deepEqual(await table(), [FRODO, BILBO, SAM]);
  });

  await check('eq: from(users).eq(name, Bilbo).select("id, name")', async () => {
    const rows = okRows(await athena.from('users').eq('name', 'Bilbo').select('id, name'));
    assert.deepEqual(rows, [{ id: 2, name: 'Bilbo' }]);
  });

  await check('eq on a boolean column and on a number', async () => {
    assert.deepEqual(okRows(await athena.from('users').eq('active', false).select('id')), [{ id: 3 }]);
    assert.deepEqual(okRows(await athena.from('users').eq('age', 111).select('id')), [{ id: 2 }]);
  });

  await check('eq null: email IS NULL', async () => {
    assert.deepEqual(okRows(await athena.from('users').eq('email', null).select('id')), [{ id: 3 }]);
  });

  await check('gt + limit: gt(id, 1).limit(1)', async () => {
    assert.deepEqual(okRows(await athena.from('users').gt('id', 1).limit(1).select('id')), [{ id: 2 }]);
  });

  await check('gt alone, gte/lt/lte, neq', async () => {
    assert.deepEqual(okRows(await athena.from('users').gt('id', 1).select('id')), [{ id: 2 }, { id: 3 }]);
    assert.deepEqual(okRows(await athena.from('users').gte('age', 50).lt('age', 111).select('id')), [{ id: 1 }]);
    assert.deepEqual(okRows(await athena.from('users').lte('age', 50).select('id')), [{ id: 1 }, { id: 3 }]);
    assert.deepEqual(okRows(await athena.from('users').neq('name', 'Frodo').select('id')), [{ id: 2 }, { id: 3 }]);
  });

  await check('in: in(id, [1, 3]); in with []', async () => {
    const rows = okRows(await athena.from('users').in('id', [1, 3]).select('id, name'));
    assert.deepEqual(rows, [{ id: 1, name: 'Frodo' }, { id: 3, name: 'Sam' }]);
    assert.deepEqual(okRows(await athena.from('users').in('name', ['Bilbo', 'Gandalf']).select('id')), [{ id: 2 }]);
    assert.deepEqual(okRows(await athena.from('users').in('id', []).select('id')), []);
  });

  await check('like is case-sensitive; ilike is not', async () => {
    assert.deepEqual(okRows(await athena.from('users').like('name', 'B%').select('id, name')),
      [{ id: 2, name: 'Bilbo' }]);
    assert.deepEqual(okRows(await athena.from('users').like('name', 'b%').select('id')), []);
    assert.deepEqual(okRows(await athena.from('users').like('email', '%@shire').select('id')), [{ id: 1 }, { id: 2 }]);
    assert.deepEqual(okRows(await athena.from('users').like('name', '_am').select('id')), [{ id: 3 }]);
    assert.deepEqual(okRows(await athena.from('users').ilike('name', 'b%').select('id')), [{ id: 2 }]);
  });

  await check('is, or, not (0.2.1 expression forms)', async () => {
    assert.deepEqual(okRows(await athena.from('users').is('email', null).select('id')), [{ id: 3 }]);
    assert.deepEqual(okRows(await athena.from('users').is('active', true).select('id')), [{ id: 1 }, { id: 2 }]);
    assert.deepEqual(
      okRows(await athena.from('users').or('age.gt.100,and(active.is.false,email.is.null)').select('id')),
      [{ id: 2 }, { id: 3 }]);
    // 0.2.1 sends {"operator":"not","value":"id.in.1,2"}
    assert.deepEqual(okRows(await athena.from('users').not('id', 'in', [1, 2]).select('id')), [{ id: 3 }]);
  });

  await check('several filters are ANDed; range() pages', async () => {
    assert.deepEqual(okRows(await athena.from('users').eq('active', true).gt('age', 60).select('name')),
      [{ name: 'Bilbo' }]);
    assert.deepEqual(okRows(await athena.from('users').range(1, 2).select('id')), [{ id: 2 }, { id: 3 }]);
    assert.deepEqual(okRows(await athena.from('users').offset(2).select('id')), [{ id: 3 }]);
  });

  await check('single() returns the first row as data', async () => {
    const res = await athena.from('users').eq('id', 2).single('id, name');
    // 0.2.1's single() applies to `data`, the whole body (an object), so it
    // stays the body; the rows are still at data.data.
    assert.equal(res.status, 200, show(res));
    assert.deepEqual(res.data.data, [{ id: 2, name: 'Bilbo' }]);
  });

  // ---- insert -----------------------------------------------------------
  await check('insert one row, returning chosen columns', async () => {
    const res = await athena.from('users')
      .insert({ id: 10, name: 'Merry', email: 'merry@buckland', age: 36, active: true })
      .select('id, name');
    assert.deepEqual(mutated(res, 1), [{ id: 10, name: 'Merry' }]);
    assert.equal(res.data.message, 'Inserted 1 rows');
    assert.deepEqual(await byId(10), { id: 10, name: 'Merry', email: 'merry@buckland', age: 36, active: true });
  });

  await check('insert several rows, awaited directly (returns "*")', async () => {
    const res = await athena.from('users').insert([
      { id: 11, name: 'Pippin', email: 'pippin@tuckborough', age: 28, active: true },
      { id: 12, name: 'Fatty', email: 'fatty@crickhollow', age: 33, active: false },
    ]);
    const rows = mutated(res, 2);
    assert.deepEqual(rows.slice().sort((a, b) => a.id - b.id), [
      { id: 11, name: 'Pippin', email: 'pippin@tuckborough', age: 28, active: true },
      { id: 12, name: 'Fatty', email: 'fatty@crickhollow', age: 33, active: false },
    ]);
    assert.deepEqual((await table()).map((r) => r.id), [1, 2, 3, 10, 11, 12]);
  });

  await check('insert of an existing key: 409 unique_violation, nothing changed', async () => {
    const before = await table();
    const res = await athena.from('users').insert({ id: 10, name: 'Impostor' }).select('id');
    const body = refused(res, 409, 'unique_violation');
    assert.doesNotMatch(JSON.stringify(body), /SQLITE|constraint failed|duplicate key|INSERT|users_pkey/i,
      'the error leaks driver text');
    assert.deepEqual(await table(), before);
  });

  // ---- upsert -----------------------------------------------------------
  await check('upsert on conflict (id) updates the inserted columns only', async () => {
    const res = await athena.from('users').upsert({ id: 10, name: 'Meriadoc' }, { onConflict: 'id' })
      .select('id, name');
    assert.deepEqual(mutated(res, 1), [{ id: 10, name: 'Meriadoc' }]);
    assert.deepEqual(await byId(10), { id: 10, name: 'Meriadoc', email: 'merry@buckland', age: 36, active: true });
  });

  await check('upsert of a new key inserts it', async () => {
    const res = await athena.from('users').upsert({ id: 13, name: 'Rosie', age: 30, active: true },
      { onConflict: 'id' }).select('id, name');
    assert.deepEqual(mutated(res, 1), [{ id: 13, name: 'Rosie' }]);
    assert.deepEqual(await byId(13), { id: 13, name: 'Rosie', email: null, age: 30, active: true });
  });

  await check('upsert with updateBody (README form) applies updateBody on conflict', async () => {
    const res = await athena.from('users').upsert({ id: 10, name: 'ignored' },
      { onConflict: 'id', updateBody: { name: 'Brandybuck' } }).select('id, name');
    assert.deepEqual(mutated(res, 1), [{ id: 10, name: 'Brandybuck' }]);
    assert.equal((await byId(10)).name, 'Brandybuck');
  });

  await check('upsert on conflict of a unique column (email)', async () => {
    const res = await athena.from('users').upsert({ id: 1, name: 'Frodo Baggins', email: 'frodo@shire' },
      { onConflict: 'email' }).select('id, name, email');
    assert.deepEqual(mutated(res, 1), [{ id: 1, name: 'Frodo Baggins', email: 'frodo@shire' }]);
    assert.deepEqual(await byId(1), { ...FRODO, name: 'Frodo Baggins' });
  });

  // ---- update -----------------------------------------------------------
  await check('update with an eq filter, returning chosen columns', async () => {
    const res = await athena.from('users').eq('id', 10).update({ name: 'Samwise' }).select('id, name');
    assert.deepEqual(mutated(res, 1), [{ id: 10, name: 'Samwise' }]);
    assert.equal(res.data.message, 'Updated 1 rows');
    assert.deepEqual(await byId(10), { id: 10, name: 'Samwise', email: 'merry@buckland', age: 36, active: true });
  });

  await check('update with a non-key filter updates every match', async () => {
    const res = await athena.from('users').eq('active', false).update({ age: 40 });
    const rows = mutated(res, 2);
    assert.deepEqual(rows.map((r) => r.id).sort((a, b) => a - b), [3, 12]);
    const after = await table();
    assert.deepEqual(after.filter((r) => r.age === 40).map((r) => r.id), [3, 12]);
    assert.equal(after.find((r) => r.id === 2).age, 111, 'a non-matching row changed');
  });

  await check('update sets NULL from a JSON null', async () => {
    mutated(await athena.from('users').eq('id', 10).update({ email: null }).select('id'), 1);
    assert.equal((await byId(10)).email, null);
  });

  await check('update matching nothing: 200, affected_rows 0', async () => {
    assert.deepEqual(mutated(await athena.from('users').eq('id', 999).update({ name: 'Nobody' }), 0), []);
  });

  await check('unfiltered update: 400 unfiltered_update, nothing changed', async () => {
    const before = await table();
    const res = await athena.from('users').update({ name: 'X' });
    refused(res, 400, 'unfiltered_update');
    assert.deepEqual(await table(), before);
  });

  // ---- delete -----------------------------------------------------------
  await check('delete with eq(id): resource_id + conditions, returns the row', async () => {
    const res = await athena.from('users').eq('id', 10).delete();
    const rows = mutated(res, 1);
    assert.deepEqual(rows, [{ id: 10, name: 'Samwise', age: 36, active: true }]);
    assert.equal(res.data.message, 'Deleted 1 rows');
    assert.equal(await byId(10), null);
  });

  await check('delete with a non-key filter (no resource_id)', async () => {
    const res = await athena.from('users').eq('name', 'Fatty').delete().select('id, name');
    assert.deepEqual(mutated(res, 1), [{ id: 12, name: 'Fatty' }]);
    assert.equal(await byId(12), null);
  });

  await check('delete with options.resourceId', async () => {
    const res = await athena.from('users').delete({ resourceId: '13' }).select('id');
    assert.deepEqual(mutated(res, 1), [{ id: 13 }]);
    assert.equal(await byId(13), null);
  });

  await check('delete with two filters matching nothing: 200, affected_rows 0', async () => {
    const before = await table();
    const res = await athena.from('users').eq('name', 'Pippin').gt('age', 100).delete();
    assert.deepEqual(mutated(res, 0), []);
    assert.deepEqual(await table(), before);
  });

  await check('delete() without a filter throws in 0.2.1 before sending', async () => {
    assert.throws(() => athena.from('users').delete(), /resource_id/);
  });

  await check('the table holds what the mutations left', async () => {
    assert.deepEqual(await table(), [
      { ...FRODO, name: 'Frodo Baggins' },
      BILBO,
      { ...SAM, age: 40 },
      { id: 11, name: 'Pippin', email: 'pippin@tuckborough', age: 28, active: true },
    ]);
  });

  await check('upsert with updateBody {} on a conflict does nothing', async () => {
    const before = await table();
    // 0.2.1 sends "update_body":{} ({} is truthy): ON CONFLICT DO NOTHING
    const res = await athena.from('users').upsert({ id: 11, name: 'ignored' },
      { onConflict: 'id', updateBody: {} }).select('id, name');
    assert.deepEqual(mutated(res, 0), []);
    assert.deepEqual(await table(), before);
  });

  // ---- value mapping (§7) and client options ----------------------------
  await check('kv: big integers as strings, bytes as \\x hex, JSON nested', async () => {
    assert.deepEqual(okRows(await athena.from('kv').eq('id', 1).select()),
      [{ id: 1, big: '9007199254740993', bin: '\\x00ff', doc: { a: [1, 2] } }]);
    const res = await athena.from('kv').insert({ id: 2, big: '9007199254740995', doc: { b: [3, 'x'] } });
    assert.deepEqual(mutated(res, 1), [{ id: 2, big: '9007199254740995', doc: { b: [3, 'x'] } }]);
    assert.deepEqual(okRows(await athena.from('kv').eq('big', '9007199254740995').select('id, big, doc')),
      [{ id: 2, big: '9007199254740995', doc: { b: [3, 'x'] } }]);
  });

  await check('createClient option stripNulls:false: the body field (true) wins over the header', async () => {
    // 0.2.1 puts the client option only in X-Strip-Nulls; select() still
    // sends "strip_nulls": true in the body, which wins (§3.3)
    const c = createClient(baseUrl, key, { stripNulls: false });
    assert.deepEqual(okRows(await c.from('users').eq('id', 3).select('id, email')), [{ id: 3 }]);
    assert.deepEqual(okRows(await c.from('users').eq('id', 3).select('id, email', { stripNulls: false })),
      [{ id: 3, email: null }]);
  });

  await check('createClient option client: custom_supabase is 400 unknown_client', async () => {
    const c = createClient(baseUrl, key, { client: 'custom_supabase', supabaseUrl: 'http://10.0.0.1',
      supabaseKey: 'not-a-key' });
    refused(await c.from('users').select(), 400, 'unknown_client');
  });

  // ---- keys and refusals ----------------------------------------------
  await check('wrong key: 401 invalid_key on read and on write, nothing changed', async () => {
    const before = await table();
    const bad = createClient(baseUrl, 'wrong-key-' + Date.now());
    refused(await bad.from('users').select(), 401, 'invalid_key');
    refused(await bad.from('users').insert({ id: 20, name: 'Gollum' }), 401, 'invalid_key');
    refused(await bad.from('users').eq('id', 1).update({ name: 'Gollum' }), 401, 'invalid_key');
    refused(await bad.from('users').eq('id', 1).delete(), 401, 'invalid_key');
    assert.deepEqual(await table(), before);
  });

  await check('unknown table: 404 unknown_table', async () => {
    refused(await athena.from('nope').select(), 404, 'unknown_table');
  });

  if (readKey) {
    await check('read-only key: select allowed, insert/update/delete 403 forbidden', async () => {
      const before = await table();
      const ro = createClient(baseUrl, readKey);
      assert.deepEqual(okRows(await ro.from('users').eq('id', 2).select('id')), [{ id: 2 }]);
      refused(await ro.from('users').insert({ id: 21, name: 'Smeagol' }), 403, 'forbidden');
      refused(await ro.from('users').eq('id', 2).update({ name: 'Smeagol' }), 403, 'forbidden');
      refused(await ro.from('users').eq('id', 2).delete(), 403, 'forbidden');
      assert.deepEqual(await table(), before);
    });
  }
}

try {
  await main();
  console.log(`npm_interop: all ${passed} checks passed against ${baseUrl} with ${PKG}@${PKG_VERSION}`);
  process.exit(0);
} catch (e) {
  console.error(`npm_interop: FAILED at step "${step}" (${passed} passed before it)`);
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
}
