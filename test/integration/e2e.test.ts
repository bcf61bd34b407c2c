import fs from 'node:fs';
import path from 'node:path';
import { db, imageSetCounts } from '../../core/db';
import { GROUPING_PRESETS } from '../../core/grouping';
import { getBytes, layout, parseS3Uri } from '../../core/s3';
import { connectClient } from '../../core/temporal';
import { submit } from '../../starter/submit';
import { generateSyntheticPlate, type GroundTruth } from '../fixtures/synthetic-plate';
import { progressQuery } from '../../workflows/progress';
import {
  readCsvFromS3,
  requireStack,
  runCli,
  s3Keys,
  startWatcher,
  startWorkers,
  tempDir,
  teardown,
  uniqueName,
  waitForExperiment,
  type ManagedProcess,
} from '../support/harness';

/**
 * The whole flow on the real stack: submit → watcher → ExperimentWorkflow → per-set outputs in S3 →
 * rows in MariaDB → summary values equal the synthetic plate's ground truth → report present.
 */
jest.setTimeout(600_000);

let workers: ManagedProcess | undefined;
let watcher: ManagedProcess | undefined;
const project = uniqueName('e2e');

beforeAll(async () => {
  requireStack();
  [workers, watcher] = await Promise.all([startWorkers(), startWatcher()]);
});

afterAll(async () => {
  await teardown(workers, watcher);
});

describe('a synthetic plate end to end', () => {
  let truth: GroundTruth;
  let experimentId: number;

  beforeAll(async () => {
    const dir = tempDir('plate');
    truth = await generateSyntheticPlate({ outDir: dir, rows: 2, cols: 3, sites: 2, seed: 7, bitDepth: 16, compression: 'lzw' });
    fs.rmSync(path.join(dir, 'ground-truth.json'), { force: true });
    const submitted = await submit({
      project,
      name: 'plate-1',
      folder: dir,
      grouping: GROUPING_PRESETS.synthetic!.rule,
      engine: 'builtin',
    });
    experimentId = submitted.experimentId;
    expect(submitted.imageSets).toBe(truth.sets.length);
  });

  it('finishes done with every set analysed once', async () => {
    const e = await waitForExperiment(experimentId);
    expect(e.status).toBe('done');
    expect(e.total_sets).toBe(12);
    expect(e.done_sets).toBe(12);
    expect(e.failed_sets).toBe(0);
    const counts = await imageSetCounts(await db(), experimentId);
    expect(counts).toMatchObject({ total: 12, done: 12, failed: 0, pending: 0 });
  });

  it('writes each set’s tables and provenance under its deterministic prefix, and nothing else', async () => {
    const e = await waitForExperiment(experimentId);
    const keys = await s3Keys(`s3://${e.bucket}/${layout.experimentRoot(experimentId)}sets/`);
    const expected = truth.sets.flatMap((s) =>
      ['Experiment.csv', 'Image.csv', 'Nuclei.csv', 'provenance.json'].map((f) => `${layout.setPrefix(experimentId, s.key)}${f}`),
    );
    expect(keys).toEqual(expected.sort());
    const provenance = JSON.parse(
      (await getBytes(e.bucket, `${layout.setPrefix(experimentId, truth.sets[0]!.key)}provenance.json`)).toString('utf8'),
    ) as { engine: { name: string }; inputs: Array<{ sha256: string; checksum: string }> };
    expect(provenance.engine.name).toBe('builtin');
    // ImageNumber is the image set's id, unique in the experiment: per-set folders concatenate safely.
    const ids = await (await db()).query<Array<{ id: number; set_key: string }>>('SELECT id, set_key FROM image_set WHERE experiment_id = ?', [experimentId]);
    for (const { id, set_key } of ids.slice(0, 3)) {
      const rows = await readCsvFromS3(`s3://${e.bucket}/${layout.setPrefix(experimentId, set_key)}Nuclei.csv`);
      expect(new Set(rows.map((r) => Number(r.ImageNumber)))).toEqual(new Set([id]));
    }
    for (const input of provenance.inputs) expect(input.checksum).toBe(`sha256:${input.sha256}`);
  });

  it('records every result file exactly once in MariaDB', async () => {
    const rows = await (await db()).query<Array<{ n: number; sets: number }>>(
      `SELECT COUNT(*) AS n, COUNT(DISTINCT image_set_id) AS sets FROM result_file WHERE experiment_id = ? AND image_set_id IS NOT NULL`,
      [experimentId],
    );
    expect(rows[0]).toEqual({ n: 12 * 4, sets: 12 });
    const experimentLevel = await (await db()).query<Array<{ kind: string }>>(
      'SELECT kind FROM result_file WHERE experiment_id = ? AND image_set_id IS NULL ORDER BY kind',
      [experimentId],
    );
    expect(experimentLevel.map((r) => r.kind)).toEqual(['experiment-provenance', 'report', 'summary']);
  });

  it('summarises nucleus counts equal to the ground truth', async () => {
    const e = await waitForExperiment(experimentId);
    expect(e.summary_uri).toBeTruthy();
    const rows = await readCsvFromS3(e.summary_uri!);
    expect(rows).toHaveLength(truth.sets.length);
    for (const set of truth.sets) {
      const row = rows.find((r) => r.ImageSet_Key === set.key);
      expect(row).toBeDefined();
      expect({ key: set.key, count: Number(row!.Count_Nuclei) }).toEqual({ key: set.key, count: set.nucleusCount });
      expect(row!.Metadata_Well).toBe(set.well);
      // Otsu cuts off each nucleus's dim rim, so segmented areas run below the rendered ones; they
      // must still track them (a wrong object, e.g. a merged pair, would double the mean).
      const ratio = Number(row!.Mean_Nuclei_AreaShape_Area) / set.meanNucleusArea;
      expect(ratio).toBeGreaterThan(0.5);
      expect(ratio).toBeLessThan(1.2);
    }
  });

  it('stores a self-contained Plotly report', async () => {
    const e = await waitForExperiment(experimentId);
    const { bucket, key } = parseS3Uri(e.report_uri!);
    const html = (await getBytes(bucket, key)).toString('utf8');
    expect(html).toContain('Plotly.newPlot');
    expect(html).toContain('plate-1');
    expect(html).not.toMatch(/<script[^>]+src=["']https?:/);
  });

  it('is visible in Temporal with its search attributes and final progress', async () => {
    const client = await connectClient();
    try {
      const handle = client.workflow.getHandle(`experiment-${experimentId}`);
      const d = await handle.describe();
      expect(d.status.name).toBe('COMPLETED');
      const result = (await handle.result()) as { done: number; failed: number; phase: string };
      expect(result).toMatchObject({ done: 12, failed: 0, phase: 'finished' });
      const found = [];
      for await (const w of client.workflow.list({ query: `CpflowExperimentId = '${experimentId}'` })) found.push(w.workflowId);
      expect(found).toContain(`experiment-${experimentId}`);
      void progressQuery;
    } finally {
      await client.connection.close();
    }
  });

  it('skips every finished set when the experiment is run again (checkpointing)', async () => {
    const pool = await db();
    await pool.query(`UPDATE image_set SET status = 'pending' WHERE experiment_id = ?`, [experimentId]);
    await pool.query(`UPDATE experiment SET status = 'submitted' WHERE id = ?`, [experimentId]);
    const e = await waitForExperiment(experimentId, (x) => x.status === 'done' && x.finished_at !== null && x.done_sets === 12, 300_000);
    expect(e.status).toBe('done');
    const skipped = await pool.query<Array<{ n: number }>>(
      'SELECT COUNT(*) AS n FROM image_set WHERE experiment_id = ? AND skipped = 1',
      [experimentId],
    );
    expect(skipped[0]!.n).toBe(12);
  });
});

describe('bad input fails only its own image set', () => {
  it('ends done_with_failures with the reasons recorded, the other sets done', async () => {
    const dir = tempDir('bad-plate');
    const truth = await generateSyntheticPlate({ outDir: dir, rows: 1, cols: 4, sites: 1, seed: 11 });
    fs.rmSync(path.join(dir, 'ground-truth.json'), { force: true });
    const [corrupt, empty] = truth.sets;
    fs.writeFileSync(path.join(dir, corrupt!.files.DNA!), 'this is not a TIFF file at all');
    fs.writeFileSync(path.join(dir, empty!.files.Actin!), '');
    const { experimentId } = await submit({
      project,
      name: 'bad-plate',
      folder: dir,
      grouping: GROUPING_PRESETS.synthetic!.rule,
      engine: 'builtin',
      maxFailedFraction: 0.6,
    });
    const e = await waitForExperiment(experimentId);
    expect(e.status).toBe('done_with_failures');
    const sets = await (await db()).query<Array<{ set_key: string; status: string; error: string | null }>>(
      'SELECT set_key, status, error FROM image_set WHERE experiment_id = ? ORDER BY set_key',
      [experimentId],
    );
    const byKey = new Map(sets.map((s) => [s.set_key, s]));
    expect(byKey.get(corrupt!.key)).toMatchObject({ status: 'failed' });
    expect(byKey.get(corrupt!.key)!.error).toContain(path.basename(corrupt!.files.DNA!));
    expect(byKey.get(empty!.key)).toMatchObject({ status: 'failed' });
    expect(byKey.get(empty!.key)!.error).toMatch(/empty/i);
    for (const s of truth.sets.slice(2)) expect(byKey.get(s.key)).toMatchObject({ status: 'done', error: null });
    const summary = await readCsvFromS3(e.summary_uri!);
    expect(summary).toHaveLength(4);
    expect(summary.filter((r) => r.Status === 'failed').map((r) => r.ImageSet_Key).sort()).toEqual([corrupt!.key, empty!.key].sort());
  });
});

describe('the CLI on bad arguments and unreachable services', () => {
  it('rejects a file that is not a CellProfiler pipeline at submit', async () => {
    const r = await runCli(['submit', '--project', project, '--name', 'x', '--folder', '/tmp', '--grouping', 'synthetic', '--pipeline', path.join(__dirname, 'e2e.test.ts')]);
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/e2e\.test\.ts: not a CellProfiler (text )?pipeline/i);
  });

  it('names a bad setting', async () => {
    const r = await runCli(['list'], { CPFLOW_DB_PORT: 'lots' });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('CPFLOW_DB_PORT="lots"');
  });

  it('names unreachable MariaDB, Temporal and S3 with where it looked', async () => {
    const dbDown = await runCli(['list'], { CPFLOW_DB_PORT: '1' });
    expect(dbDown.code).toBe(1);
    expect(dbDown.stderr).toMatch(/MariaDB unreachable at 127\.0\.0\.1:1\b/);
    const temporalDown = await runCli(['watch', '--once'], { CPFLOW_TEMPORAL_ADDRESS: '127.0.0.1:1' });
    expect(temporalDown.code).toBe(1);
    expect(temporalDown.stderr).toMatch(/Temporal unreachable at 127\.0\.0\.1:1\b/);
    const dir = tempDir('s3down');
    await generateSyntheticPlate({ outDir: dir, rows: 1, cols: 1 });
    const s3Down = await runCli(
      ['submit', '--project', uniqueName('s3down'), '--name', 'x', '--folder', dir, '--grouping', 'synthetic', '--engine', 'builtin'],
      { CPFLOW_S3_ENDPOINT: 'http://127.0.0.1:1' },
    );
    expect(s3Down.code).toBe(1);
    expect(s3Down.stderr).toMatch(/S3 unreachable at http:\/\/127\.0\.0\.1:1/);
    // Nothing half-written: no experiment row for the failed submit.
    const rows = await (await db()).query<Array<{ n: number }>>(
      "SELECT COUNT(*) AS n FROM experiment e JOIN project p ON p.id = e.project_id WHERE p.name LIKE 's3down-%'",
    );
    expect(rows[0]!.n).toBe(0);
  });
});
