import fs from 'node:fs';
import path from 'node:path';
import { db, getExperiment, upsertImageSets } from '../../core/db';
import { GROUPING_PRESETS, groupFiles } from '../../core/grouping';
import { putFile } from '../../core/s3';
import { submit } from '../../starter/submit';
import { generateSyntheticPlate } from '../fixtures/synthetic-plate';
import { connectClient } from '../../core/temporal';
import { progressQuery } from '../../workflows/progress';
import { readCsvFromS3, requireStack, runCli, startWatcher, startWorkers, tempDir, teardown, uniqueName, waitForExperiment, type ManagedProcess } from '../support/harness';

/**
 * Streaming acquisition: an open experiment takes image sets as they arrive — from `cpflow submit
 * --append` and from rows another lab system inserts — and reduces only once it is sealed and every
 * set has ended.
 */
jest.setTimeout(600_000);

let workers: ManagedProcess | undefined;
let watcher: ManagedProcess | undefined;
afterAll(async () => {
  await teardown(workers, watcher);
});

it('analyses sets added while open and reduces once after the seal', async () => {
  requireStack();
  [workers, watcher] = await Promise.all([startWorkers(), startWatcher()]);
  const project = uniqueName('stream');
  const plate = tempDir('stream');
  await generateSyntheticPlate({ outDir: plate, rows: 1, cols: 6, sites: 1, size: 96, seed: 3 });
  fs.rmSync(path.join(plate, 'ground-truth.json'));
  const batch = (wells: string[]): string => {
    const dir = tempDir('stream-batch');
    for (const f of fs.readdirSync(plate)) if (wells.some((w) => f.includes(`_${w}_`))) fs.copyFileSync(path.join(plate, f), path.join(dir, f));
    return dir;
  };
  const rule = GROUPING_PRESETS.synthetic!.rule;
  const first = await submit({ project, name: 'live', folder: batch(['A01', 'A02']), grouping: rule, engine: 'builtin', open: true });
  const id = first.experimentId;
  const client = await connectClient();
  const progress = () => client.workflow.getHandle(`experiment-${id}`).query(progressQuery);
  const waitFor = async (cond: (p: Awaited<ReturnType<typeof progress>>) => boolean, what: string): Promise<void> => {
    for (let i = 0; i < 600; i++) {
      const p = await progress().catch(() => undefined);
      if (p && cond(p)) return;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`experiment ${id} never reached: ${what}`);
  };
  try {
    await waitFor((p) => p.phase === 'waiting-for-images' && p.done === 2, 'first 2 sets done, waiting');

    // The CLI's --append (it signals the workflow itself).
    const appended = await runCli(['submit', '--project', project, '--name', 'live', '--folder', batch(['A03', 'A04']), '--grouping', 'synthetic', '--append']);
    expect(appended.code).toBe(0);
    await waitFor((p) => p.phase === 'waiting-for-images' && p.done === 4, '4 sets done after --append');

    // Another lab system inserts rows directly; the watcher notices and signals the workflow.
    const pool = await db();
    const e = (await getExperiment(pool, id))!;
    const dir = batch(['A05', 'A06']);
    const grouped = groupFiles(fs.readdirSync(dir), (f) => f, rule);
    const sets = await Promise.all(grouped.sets.map(async (s) => ({
      key: s.key,
      metadata: s.metadata,
      files: await Promise.all(s.files.map(async (f) => ({ channel: f.channel, ...(await putFile(e.bucket, `lab-system/${f.file}`, path.join(dir, f.file))) }))),
    })));
    await upsertImageSets(pool, id, sets);
    await waitFor((p) => p.phase === 'waiting-for-images' && p.done === 6, '6 sets done after a direct insert');
    expect((await getExperiment(pool, id))!.status).toBe('running');
    expect((await getExperiment(pool, id))!.summary_uri).toBeNull();

    // The lab system seals by updating the row; the watcher signals the seal.
    await pool.query('UPDATE experiment SET sealed = 1 WHERE id = ?', [id]);
    const done = await waitForExperiment(id);
    expect(done.status).toBe('done');
    const summary = await readCsvFromS3(done.summary_uri!);
    expect(summary.map((r) => r.ImageSet_Key).sort()).toEqual(['P1-A01-s1', 'P1-A02-s1', 'P1-A03-s1', 'P1-A04-s1', 'P1-A05-s1', 'P1-A06-s1']);
    const reduces = await pool.query<Array<{ n: number }>>("SELECT COUNT(*) AS n FROM result_file WHERE experiment_id = ? AND kind = 'summary'", [id]);
    expect(reduces[0]!.n).toBe(1);
  } finally {
    await client.connection.close();
  }
});
