import { MockActivityEnvironment } from '@temporalio/testing';
import { closeDb } from '../../core/db';
import { workflowIdFor } from '../../core/model/names';
import { reduceExperiment } from '../../activities/reduce-experiment';

/**
 * `node --require tsx/cjs test/bench/reduce-child.ts <experiment id>`: the reduce activity alone, in
 * Temporal's mock activity environment, in a process of its own so the benchmark reads its peak RSS
 * and CPU time. Prints one JSON line: seconds, the process's CPU seconds and the activity's output.
 */
async function main(): Promise<void> {
  const experimentId = Number(process.argv[2]);
  if (!Number.isInteger(experimentId) || experimentId < 1) throw new Error(`usage: reduce-child.ts <experiment id>, got ${process.argv[2]}`);
  const env = new MockActivityEnvironment({ attempt: 1 });
  const t0 = process.hrtime.bigint();
  const output = await env.run(reduceExperiment, { experimentId, workflowId: workflowIdFor(experimentId) });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const usage = process.cpuUsage();
  console.log(JSON.stringify({ seconds, cpuSeconds: (usage.user + usage.system) / 1e6, output }));
  await closeDb();
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`reduce-child: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
