// graphile-worker 0.17 on the same PostgreSQL server as Athena's PostgreSQL
// backend, for bench/distributed.sh: the peer the issue names (#16).
//
//   node bench.mjs URL [jobs=200000] [processes=3] [concurrency=24] [localQueue=500]
//
// Shape, in graphile-worker's own terms (its performance docs and its
// batching preset: a localQueue, completeJobBatchDelay 0): all jobs are
// enqueued first, 1,000 per add_jobs call; then `processes` worker processes
// each run `concurrency` no-op jobs at a time until none is left.
// - enqueue: jobs / the time the add_jobs calls took;
// - processed: jobs / the time from the first worker being ready to the
//   jobs table being empty (process start-up is not counted);
// - end-to-end: jobs / (enqueue time + processing time).
// The schema graphile_worker is dropped and created again: point URL at a
// throwaway database (scripts/pg-test).
import { fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import { Logger, run, runMigrations, makeWorkerUtils } from "graphile-worker";
import pg from "pg";

const self = fileURLToPath(import.meta.url);
const args = process.argv.slice(2);
const isWorker = args[0] === "worker";
const url = isWorker ? args[1] : args[0];

const quiet = new Logger(() => () => {});

function preset(size) {
  return { worker: { localQueue: { size }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } };
}

async function worker(concurrency, size) {
  const runner = await run({
    connectionString: url,
    concurrency,
    noHandleSignals: true,
    pollInterval: 1000,
    logger: quiet, // a line per job would cost it CPU Athena does not spend
    preset: preset(size),
    taskList: { noop: async () => {} },
  });
  process.send("ready");
  process.on("message", async (m) => {
    if (m === "stop") {
      await runner.stop();
      process.exit(0);
    }
  });
}

async function main(jobs, procs, concurrency, size) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  await client.query("DROP SCHEMA IF EXISTS graphile_worker CASCADE");
  await runMigrations({ connectionString: url, logger: quiet });
  const utils = await makeWorkerUtils({ connectionString: url, logger: quiet });
  const t0 = performance.now();
  for (let i = 0; i < jobs; i += 1000) {
    const batch = [];
    for (let k = i; k < Math.min(jobs, i + 1000); k++) batch.push({ identifier: "noop", payload: { i: k } });
    await utils.addJobs(batch);
  }
  const enqueue = (performance.now() - t0) / 1000;
  await utils.release();
  const children = [];
  let ready = 0;
  let started = 0;
  await new Promise((resolve, reject) => {
    for (let p = 0; p < procs; p++) {
      const c = fork(self, ["worker", url, String(concurrency), String(size)], { stdio: "inherit" });
      c.on("message", (m) => {
        if (m === "ready" && ready++ === 0) started = performance.now();
        if (ready === procs) resolve();
      });
      c.on("exit", (code) => code !== 0 && reject(new Error(`worker exited ${code}`)));
      children.push(c);
    }
  });
  for (;;) {
    const r = await client.query("SELECT count(*)::int AS n FROM graphile_worker._private_jobs");
    if (r.rows[0].n === 0) break;
    await new Promise((res) => setTimeout(res, 20));
  }
  const processing = (performance.now() - started) / 1000;
  for (const c of children) c.send("stop");
  await Promise.all(children.map((c) => new Promise((res) => c.on("exit", res))));
  await client.end();
  const f = (x) => Math.round(x).toLocaleString("en-US");
  console.log(
    `graphile-worker 0.17: ${jobs} jobs, ${procs} processes x concurrency ${concurrency}, localQueue ${size}: ` +
      `enqueue ${f(jobs / enqueue)}/s, processed ${f(jobs / processing)}/s, end-to-end ${f(jobs / (enqueue + processing))}/s`,
  );
}

if (isWorker) {
  await worker(Number(args[2]), Number(args[3]));
} else if (!url) {
  console.error("usage: node bench.mjs URL [jobs=200000] [processes=3] [concurrency=24] [localQueue=500]");
  process.exit(2);
} else {
  const num = (i, d) => (args[i] !== undefined ? Number(args[i]) : d);
  await main(num(1, 200000), num(2, 3), num(3, 24), num(4, 500));
}
