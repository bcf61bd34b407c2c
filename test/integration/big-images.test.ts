import fs from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { db, getExperiment } from '../../core/db';
import { GROUPING_PRESETS } from '../../core/grouping';
import { DEFAULTS, workflowIdFor } from '../../core/model';
import { getBytes, layout } from '../../core/s3';
import { connectClient } from '../../core/temporal';
import { submit } from '../../starter/submit';
import { declaredSizeTiff, tiledImage } from '../fixtures/big-images';
import { generateSyntheticPlate } from '../fixtures/synthetic-plate';
import { readCsvFromS3, requireStack, runCli, startWatcher, startWorkers, tempDir, teardown, uniqueName, waitForExperiment, type ManagedProcess } from '../support/harness';

/**
 * Big images (issue 9, item 6) on the real stack, with one worker process and its default slots:
 * - a TIFF declaring 23170 × 23170 16-bit pixels (1 GiB of samples, 2 GiB as the builtin engine's
 *   floats) is refused by `cpflow submit`, and when registered anyway (a submitter with a higher
 *   CPFLOW_MAX_IMAGE_PIXELS) it fails its set once, from its header, without being decoded;
 * - a real large image set (a synthetic site tiled to 2896², 8.4 Mpx) is analysed once (the 10240²
 *   case, near the default limit, is big-image.test.ts's);
 * - meanwhile another experiment's sets keep completing, and no activity anywhere hits its
 *   heartbeat time-out (the worker's event loop is never blocked that long).
 */
jest.setTimeout(600_000);

const { EventType } = temporal.api.enums.v1;
/** A large real image, well under the default limit (big-image.test.ts analyses one of 10240²). */
const LARGEST = 2896;
/**
 * Both experiments run one set per activity, so the history shows each set's runs (the large one
 * exactly once) and the flowing experiment completes its sets one by one, one at a time (adaptive
 * batching would finish its 48 small sets in two or three batches, before the large set ends).
 */
const PER_SET_ONE_AT_A_TIME = { batchSize: 1, window: 1 };
/** DEFAULTS.ANALYSIS_HEARTBEAT_TIMEOUT ('20 seconds'), in milliseconds. */
const HEARTBEAT_TIMEOUT_MS = Number(/^(\d+) seconds$/.exec(DEFAULTS.ANALYSIS_HEARTBEAT_TIMEOUT)?.[1] ?? NaN) * 1000;
let workers: ManagedProcess | undefined;
let watcher: ManagedProcess | undefined;
let client: Client | undefined;

beforeAll(async () => {
  requireStack();
  [workers, watcher] = await Promise.all([startWorkers(), startWatcher()]);
  client = await connectClient();
});

afterAll(async () => {
  await client?.connection.close();
  await teardown(workers, watcher);
});

interface ActivityRun {
  summary: string;
  attempt: number;
  startedAt: number;
  endedAt: number | undefined;
  timedOut: boolean;
}

/** Every analysis activity of an experiment, from its chunk children's histories. */
async function analysisRuns(experimentId: number): Promise<ActivityRun[]> {
  const parent = await client!.workflow.getHandle(workflowIdFor(experimentId)).fetchHistory();
  const children = (parent.events ?? [])
    .filter((e) => e.eventType === EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED)
    .map((e) => e.startChildWorkflowExecutionInitiatedEventAttributes?.workflowId ?? '');
  const runs: ActivityRun[] = [];
  for (const child of children) {
    const events = (await client!.workflow.getHandle(child).fetchHistory()).events ?? [];
    const scheduled = new Map<string, string | undefined>();
    const started = new Map<string, ActivityRun>();
    const time = (t: { seconds?: unknown; nanos?: number | null } | null | undefined): number => Number(t?.seconds ?? 0) * 1000 + (t?.nanos ?? 0) / 1e6;
    for (const e of events) {
      const id = String(e.eventId);
      if (e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED && e.activityTaskScheduledEventAttributes?.activityType?.name === 'analyzeImageSets') {
        scheduled.set(id, e.userMetadata?.summary?.data ? Buffer.from(e.userMetadata.summary.data).toString() : '');
      }
      if (e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED) {
        const a = e.activityTaskStartedEventAttributes!;
        const summary = scheduled.get(String(a.scheduledEventId));
        if (summary !== undefined) started.set(String(a.scheduledEventId), { summary, attempt: a.attempt ?? 1, startedAt: time(e.eventTime), endedAt: undefined, timedOut: false });
      }
      const ended = e.activityTaskCompletedEventAttributes ?? e.activityTaskFailedEventAttributes ?? e.activityTaskTimedOutEventAttributes;
      if (ended) {
        const run = started.get(String(ended.scheduledEventId));
        if (run) {
          run.endedAt = time(e.eventTime);
          run.timedOut = e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT;
        }
      }
    }
    runs.push(...started.values());
  }
  return runs;
}

it('refuses a 2 GB-decoded image from its header and analyses the largest allowed one once, while another experiment flows', async () => {
  // The big experiment: set A01 holds the declared-huge DNA image, set A02 real images of the largest allowed size.
  const started = Date.now();
  const bigDir = tempDir('big');
  const small = tempDir('big-tiles');
  await generateSyntheticPlate({ outDir: small, rows: 1, cols: 2, sites: 1, size: 256, seed: 4 });
  for (const f of fs.readdirSync(small).filter((f) => f.endsWith('.tif'))) await tiledImage(path.join(small, f), LARGEST, path.join(bigDir, f));
  fs.writeFileSync(path.join(bigDir, 'P1_A01_s1_wDNA.tif'), declaredSizeTiff(23170, 23170));
  const flowDir = tempDir('flow');
  await generateSyntheticPlate({ outDir: flowDir, rows: 2, cols: 12, sites: 2, size: 256, seed: 6 });
  fs.rmSync(path.join(flowDir, 'ground-truth.json'));
  const project = uniqueName('big');
  console.log(`plates generated in ${((Date.now() - started) / 1000).toFixed(1)} s`);

  // At submit, with the default limit: refused before anything is uploaded, the file and its size named.
  const refused = await runCli(['submit', '--project', project, '--name', 'big', '--folder', bigDir, '--grouping', 'synthetic', '--engine', 'builtin']);
  expect(refused.code).toBe(2);
  expect(refused.stderr.trim()).toBe(
    'cpflow: 1 image exceeds the per-image limits: P1_A01_s1_wDNA.tif is 23170×23170 pixels (536.8 Mpx), ' +
      `above the limit of ${(DEFAULTS.MAX_IMAGE_PIXELS / 1e6).toFixed(1)} Mpx per image (CPFLOW_MAX_IMAGE_PIXELS)`,
  );

  // The other experiment first, one set at a time (window 1), so it is still going when the big one
  // arrives and its sets queue behind no backlog of their own.
  const flowId = (await submit({ project, name: 'flow', folder: flowDir, grouping: GROUPING_PRESETS.synthetic!.rule, engine: 'builtin', dispatch: PER_SET_ONE_AT_A_TIME })).experimentId;
  await waitForExperiment(flowId, (e) => e.done_sets >= 3, 120_000);

  // A submitter configured with a higher limit than the workers' registers the huge image; the workers refuse it.
  process.env.CPFLOW_MAX_IMAGE_PIXELS = String(1_000_000_000);
  let bigId: number;
  try {
    bigId = (await submit({ project, name: 'big', folder: bigDir, grouping: GROUPING_PRESETS.synthetic!.rule, engine: 'builtin', dispatch: { batchSize: 1 } })).experimentId;
  } finally {
    delete process.env.CPFLOW_MAX_IMAGE_PIXELS;
  }
  const submitted = Date.now();
  const [big, flow] = await Promise.all([waitForExperiment(bigId), waitForExperiment(flowId)]);
  console.log(`both experiments ended ${((Date.now() - submitted) / 1000).toFixed(1)} s after submit`);
  expect(flow.status).toBe('done');
  expect(flow.done_sets).toBe(48);
  expect(big.status).toBe('done_with_failures');
  const sets = await (await db()).query<Array<{ set_key: string; status: string; attempts: number; error: string | null }>>(
    'SELECT set_key, status, attempts, error FROM image_set WHERE experiment_id = ? ORDER BY set_key',
    [bigId],
  );
  const e = (await getExperiment(await db(), bigId))!;
  expect(sets).toEqual([
    {
      set_key: 'P1-A01-s1',
      status: 'failed',
      attempts: 1,
      error:
        `image set P1-A01-s1: image s3://${e.bucket}/inputs/${bigId}/P1_A01_s1_wDNA.tif (channel DNA) is 23170×23170 pixels (536.8 Mpx), ` +
        `above the limit of ${(DEFAULTS.MAX_IMAGE_PIXELS / 1e6).toFixed(1)} Mpx per image (CPFLOW_MAX_IMAGE_PIXELS)`,
    },
    { set_key: 'P1-A02-s1', status: 'done', attempts: 1, error: null },
  ]);
  const image = await readCsvFromS3(`s3://${e.bucket}/${layout.setPrefix(bigId, 'P1-A02-s1')}Image.csv`);
  expect({ width: image[0]!.Width_DNA, height: image[0]!.Height_DNA }).toEqual({ width: String(LARGEST), height: String(LARGEST) });
  expect(Number(image[0]!.Count_Nuclei)).toBeGreaterThan(0);
  const provenance = JSON.parse((await getBytes(e.bucket, `${layout.setPrefix(bigId, 'P1-A02-s1')}provenance.json`)).toString('utf8')) as { worker: { attempt: number } };
  expect(provenance.worker.attempt).toBe(1);

  // No heartbeat time-out anywhere, every activity on its first attempt.
  const bigRuns = await analysisRuns(bigId);
  const flowRuns = await analysisRuns(flowId);
  for (const run of [...bigRuns, ...flowRuns]) expect({ summary: run.summary, attempt: run.attempt, timedOut: run.timedOut }).toEqual({ summary: run.summary, attempt: 1, timedOut: false });
  expect(flowRuns).toHaveLength(48);
  // The other experiment ran alongside the large set and kept completing sets: the longest pause
  // between two of its completions stayed far below the heartbeat time-out.
  const large = bigRuns.find((r) => r.summary.includes('P1-A02-s1'));
  expect(large?.endedAt).toBeDefined();
  const overlapping = flowRuns.filter((r) => r.startedAt < large!.endedAt! && (r.endedAt ?? Infinity) > large!.startedAt);
  expect(overlapping.length).toBeGreaterThan(0);
  const completions = flowRuns.map((r) => r.endedAt!).sort((a, b) => a - b);
  const longestPause = Math.max(...completions.slice(1).map((t, i) => t - completions[i]!));
  const during = completions.filter((t) => t > large!.startedAt && t < large!.endedAt!).length;
  console.log(
    `${LARGEST}² set analysed in ${((large!.endedAt! - large!.startedAt) / 1000).toFixed(1)} s; the other experiment's 48 sets ` +
      `completed ${during} within that time, with at most ${(longestPause / 1000).toFixed(1)} s between two completions`,
  );
  expect(longestPause).toBeLessThan(HEARTBEAT_TIMEOUT_MS);
});
