/**
 * `npx tsx test/support/record-histories.ts` (with the stack's settings in the environment, e.g. via
 * `npm run stack -- env`): runs the workflows on a Temporal dev server with in-memory activities
 * (FakeLab) and writes their event histories to test/fixtures/histories/. test/unit/replay.test.ts
 * replays them against the current workflow code, so a change that would break a running experiment
 * (a reordered activity, a removed timer) fails `npm test`. Re-record deliberately, and only when
 * the change is compatible or versioned (patched()).
 *
 * Recorded:
 *  - experiment-done: 12 sets, one input error, batches of 2: plan, chunks, sync, reduce, final status;
 *  - experiment-continue-as-new: 30 sets, a 40-event budget: every run of the chain;
 *  - experiment-cancelled: cancelled while its analyses run;
 *  - experiment-open: an open experiment that receives sets by signal and is then sealed;
 *  - chunk: one ImageSetChunkWorkflow child.
 */
import fs from 'node:fs';
import path from 'node:path';
import { historyToJSON } from '@temporalio/common/lib/proto-utils';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import { DefaultLogger, Runtime, Worker } from '@temporalio/worker';
import type { Client } from '@temporalio/client';
import { SEARCH_ATTRIBUTE_KEYS, TASK_QUEUES } from '../../core/model';
import type { ExperimentWorkflowInput } from '../../workflows/experiment';
import { imageSetsAddedSignal, progressQuery, sealedSignal } from '../../workflows/progress';
import { FakeLab } from './fake-lab';

export const HISTORIES_DIR = path.resolve(__dirname, '..', 'fixtures', 'histories');

const index_: Array<{ file: string; workflowId: string }> = [];

async function save(client: Client, workflowId: string, name: string): Promise<string[]> {
  const written: string[] = [];
  let index = 0;
  for await (const run of client.workflow.list({ query: `WorkflowId = '${workflowId}'` })) {
    const history = await client.workflow.getHandle(workflowId, run.runId).fetchHistory();
    const file = path.join(HISTORIES_DIR, `${name}${index === 0 ? '' : `-run${index}`}.json`);
    index++;
    fs.writeFileSync(file, `${historyToJSON(history)}\n`);
    // The workflow id is not in the history itself, and replay needs it (child ids derive from it).
    index_.push({ file: path.basename(file), workflowId });
    written.push(file);
  }
  return written;
}

async function main(): Promise<void> {
  const cli = process.env.CPFLOW_TEMPORAL_CLI;
  if (!cli) throw new Error('CPFLOW_TEMPORAL_CLI is not set: eval "$(npm run -s stack -- env | sed \'s/^/export /\')" first');
  Runtime.install({ logger: new DefaultLogger('WARN') });
  fs.mkdirSync(HISTORIES_DIR, { recursive: true });
  for (const f of fs.readdirSync(HISTORIES_DIR)) if (f.endsWith('.json')) fs.rmSync(path.join(HISTORIES_DIR, f));
  index_.length = 0;
  const env = await TestWorkflowEnvironment.createLocal({
    server: { executable: { type: 'existing-path', path: cli }, searchAttributes: Object.values(SEARCH_ATTRIBUTE_KEYS) },
  });
  const run = async <T>(lab: FakeLab, fn: () => Promise<T>): Promise<T> => {
    const activities = lab.activities();
    const workers = await Promise.all([
      Worker.create({ connection: env.nativeConnection, taskQueue: TASK_QUEUES.workflow, workflowsPath: require.resolve('../../workflows'), activities }),
      Worker.create({ connection: env.nativeConnection, taskQueue: TASK_QUEUES.analyze, activities, maxHeartbeatThrottleInterval: '1s' }),
      Worker.create({ connection: env.nativeConnection, taskQueue: TASK_QUEUES.reduce, activities }),
    ]);
    const [w0, w1, w2] = workers;
    return w0!.runUntil(w1!.runUntil(w2!.runUntil(fn())));
  };
  const client = env.client;
  const start = (workflowId: string, input: ExperimentWorkflowInput) =>
    client.workflow.start('ExperimentWorkflow', { taskQueue: TASK_QUEUES.workflow, workflowId, args: [input] });
  try {
    const written: string[] = [];
    await run(new FakeLab(12, new Set([5]), 0, { batchSize: 2, window: 4 }), async () => {
      await (await start('replay-done', { experimentId: 1 })).result();
    });
    written.push(...(await save(client, 'replay-done', 'experiment-done')));
    written.push(...(await save(client, 'replay-done-chunk-1', 'chunk')));

    await run(new FakeLab(30, new Set(), 0, { chunkSize: 5, concurrentChunks: 2, window: 4 }), async () => {
      await (await start('replay-can', { experimentId: 2, historyEventsBudget: 40 })).result();
    });
    written.push(...(await save(client, 'replay-can', 'experiment-continue-as-new')));

    const slow = new FakeLab(6, new Set(), 60_000, { window: 2 });
    await run(slow, async () => {
      const handle = await start('replay-cancel', { experimentId: 3 });
      for (let i = 0; i < 100 && slow.inFlight < 2; i++) await new Promise((r) => setTimeout(r, 100));
      await handle.cancel();
      await handle.result().catch(() => undefined);
    });
    written.push(...(await save(client, 'replay-cancel', 'experiment-cancelled')));

    const open = new FakeLab(3);
    open.sealed = false;
    await run(open, async () => {
      const handle = await start('replay-open', { experimentId: 4 });
      const waitDone = async (n: number): Promise<void> => {
        for (let i = 0; i < 200; i++) {
          const p = await handle.query(progressQuery);
          if (p.phase === 'waiting-for-images' && p.done === n) return;
          await new Promise((r) => setTimeout(r, 100));
        }
        throw new Error(`open experiment never reached ${n} done`);
      };
      await waitDone(3);
      open.addSets(2);
      await handle.signal(imageSetsAddedSignal);
      await waitDone(5);
      open.sealed = true;
      await handle.signal(sealedSignal);
      await handle.result();
    });
    written.push(...(await save(client, 'replay-open', 'experiment-open')));
    fs.writeFileSync(path.join(HISTORIES_DIR, 'index.json'), `${JSON.stringify(index_, null, 2)}\n`);
    console.log(`recorded ${written.length} histories:\n${written.map((f) => `  ${path.relative(process.cwd(), f)}`).join('\n')}`);
  } finally {
    await env.teardown();
  }
}

if (require.main === module) {
  main().then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(err);
      process.exit(1);
    },
  );
}
