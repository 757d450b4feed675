// bench/distributed.sh's graphile-worker side (npm graphile-worker@0.17,
// installed by the script into a temporary directory; NODE_PATH points
// there): the same no-op workload as bench/dist_bench.lua, with the
// batching settings of graphile-worker's performance docs: localQueue
// (size 500), completeJobBatchDelay and failJobBatchDelay 0, concurrency 24.
//   node graphile_bench.js enqueue N   add N jobs (addJobs, 1,000 per call)
//   node graphile_bench.js worker      run a worker until SIGTERM
//   node graphile_bench.js wait N T0   wait until no job is left; print the rate since T0 (epoch ms)
//   node graphile_bench.js e2e N       add N jobs and wait until they ran, with workers running
// Environment: ATHENA_PG_URL, GW_SCHEMA.
const { run, makeWorkerUtils, Logger } = require("graphile-worker");
const { Client } = require("pg");

const connectionString = process.env.ATHENA_PG_URL;
const schema = process.env.GW_SCHEMA || "graphile_worker";
const [mode, nArg, t0Arg] = process.argv.slice(2);
const N = Number(nArg || 100000);
const preset = { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } };

async function enqueue() {
  const utils = await makeWorkerUtils({ connectionString, schema, logger: new Logger(() => () => {}) });
  await utils.migrate();
  const t0 = Date.now();
  for (let done = 0; done < N; done += 1000) {
    const specs = [];
    for (let i = 0; i < Math.min(1000, N - done); i++) specs.push({ identifier: "noop", payload: { i: done + i } });
    await utils.addJobs(specs);
  }
  const ms = Date.now() - t0;
  console.log(`graphile-worker: enqueued ${N} jobs in ${ms} ms: ${Math.round(N / (ms / 1000))} jobs/s`);
  await utils.release();
}

async function left(client) {
  const r = await client.query(`select count(*)::int as n from "${schema}"._private_jobs`);
  return r.rows[0].n;
}

async function waitEmpty(t0, label) {
  const client = new Client({ connectionString });
  await client.connect();
  while ((await left(client)) > 0) await new Promise((r) => setTimeout(r, 20));
  const ms = Date.now() - t0;
  console.log(`graphile-worker: ${label} ${N} jobs in ${ms} ms: ${Math.round(N / (ms / 1000))} jobs/s`);
  await client.end();
}

async function main() {
  if (mode === "enqueue") return enqueue();
  if (mode === "wait") return waitEmpty(Number(t0Arg), "processed");
  if (mode === "e2e") {
    const t0 = Date.now();
    await enqueue();
    return waitEmpty(t0, "end to end");
  }
  if (mode === "worker") {
    const runner = await run({ connectionString, schema, concurrency: 24, preset,
      taskList: { noop: async () => {} }, logger: new Logger(() => () => {}) });
    await runner.promise;
    return;
  }
  throw new Error("usage: graphile_bench.js enqueue|worker|wait|e2e N");
}

main().catch((e) => { console.error(e); process.exit(1); });
