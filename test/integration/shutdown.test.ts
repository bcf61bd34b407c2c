import fs from 'node:fs';
import path from 'node:path';
import { db } from '../../core/db';
import { GROUPING_PRESETS } from '../../core/grouping';
import { submit } from '../../starter/submit';
import { generateSyntheticPlate } from '../fixtures/synthetic-plate';
import { requireStack, startProcess, startWatcher, tempDir, teardown, uniqueName, waitForExperiment, type ManagedProcess } from '../support/harness';

/**
 * SIGTERM lets running analyses finish within the grace time: the worker stops taking new image sets,
 * the ones it holds complete on their first attempt, and it exits cleanly. A new worker does the rest.
 */
jest.setTimeout(600_000);

let control: ManagedProcess | undefined;
let watcher: ManagedProcess | undefined;
let analysis: ManagedProcess | undefined;
let replacement: ManagedProcess | undefined;

afterAll(async () => {
  await teardown(control, watcher, analysis, replacement);
});

it('finishes running image sets on SIGTERM and loses none', async () => {
  requireStack();
  const dir = tempDir('shutdown');
  // Large fields so each set takes long enough to be caught in flight.
  await generateSyntheticPlate({ outDir: dir, rows: 2, cols: 4, sites: 1, size: 1024, seed: 5 });
  fs.rmSync(path.join(dir, 'ground-truth.json'));
  const env = { CPFLOW_ANALYZE_SLOTS: '2', CPFLOW_SHUTDOWN_GRACE_SECONDS: '60' };
  // Pools in separate processes, as in production: only the analysis worker is stopped.
  control = startProcess('workers/workflow.ts');
  const reduce = startProcess('workers/reduce.ts');
  analysis = startProcess('workers/cellprofiler.ts', [], env);
  await Promise.all([control.waitFor(/workers running/), reduce.waitFor(/workers running/), analysis.waitFor(/workers running/)]);
  watcher = await startWatcher();

  const { experimentId } = await submit({ project: uniqueName('shutdown'), name: 'big-fields', folder: dir, grouping: GROUPING_PRESETS.synthetic!.rule, engine: 'builtin' });
  const pool = await db();
  const doneCount = async (): Promise<number> =>
    (await pool.query<Array<{ n: number }>>("SELECT COUNT(*) AS n FROM image_set WHERE experiment_id = ? AND status = 'done'", [experimentId]))[0]!.n;
  // Wait until analysis is under way (a first set mirrored), then ask the analysis worker to stop.
  for (let i = 0; i < 600 && (await doneCount()) < 1; i++) await new Promise((r) => setTimeout(r, 100));
  const code = await analysis.stop('SIGTERM');
  expect(code).toBe(0);
  expect(analysis.output()).not.toMatch(/Error/);

  replacement = startProcess('workers/cellprofiler.ts', [], env);
  await replacement.waitFor(/workers running/);
  const e = await waitForExperiment(experimentId);
  expect(e.status).toBe('done');
  const attempts = await pool.query<Array<{ set_key: string; attempts: number }>>(
    'SELECT set_key, attempts FROM image_set WHERE experiment_id = ? ORDER BY set_key',
    [experimentId],
  );
  expect(attempts).toHaveLength(8);
  // No analysis was cut off and retried: every set succeeded on its first attempt.
  expect(attempts.filter((a) => a.attempts !== 1)).toEqual([]);
  await reduce.stop();
});
