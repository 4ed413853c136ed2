// graphile-worker as a soak worker process (written next to the peer harness's
// node_modules by `pulse-fleet bench soak`). Task "noop" works WORK_MS and reports
// each job on stdout as `R <seq> <enqueue-to-start µs>`, like our soak worker.
// Env: DATABASE_URL, WORK_MS, GW_CONCURRENCY, GW_LOCAL_QUEUE (-1 = off),
//      GW_COMPLETE_BATCH_DELAY (-1 = off), GW_POLL_MS.
import { run, Logger } from "graphile-worker";
import { performance } from "node:perf_hooks";

const workMs = Number(process.env.WORK_MS ?? 1);
const concurrency = Number(process.env.GW_CONCURRENCY ?? 24);
const localQueue = Number(process.env.GW_LOCAL_QUEUE ?? 500);
const completeBatch = Number(process.env.GW_COMPLETE_BATCH_DELAY ?? 0);
const pollInterval = Number(process.env.GW_POLL_MS ?? 2000);
const nowEpoch = () => (performance.timeOrigin + performance.now()) / 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let pending = [];
setInterval(() => {
  if (pending.length) {
    process.stdout.write(pending.join(""));
    pending = [];
  }
}, 50);

const taskList = {
  noop: async (payload) => {
    const waitedUs = Math.max(0, Math.round((nowEpoch() - payload.ts) * 1e6));
    if (workMs > 0) await sleep(workMs);
    pending.push(`R ${payload.seq} ${waitedUs}\n`);
  },
};
const worker = { concurrentJobs: concurrency, maxPoolSize: concurrency + 2, pollInterval };
if (localQueue > 0) worker.localQueue = { size: localQueue };
if (completeBatch >= 0) worker.completeJobBatchDelay = completeBatch;
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`[${level}] ${message}`);
});
const runner = await run({
  connectionString: process.env.DATABASE_URL,
  concurrency,
  maxPoolSize: concurrency + 2,
  pollInterval,
  noHandleSignals: true,
  logger,
  taskList,
  preset: { worker },
});
console.log("READY");
const stop = async () => {
  await runner.stop();
  if (pending.length) process.stdout.write(pending.join(""));
  process.exit(0);
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
