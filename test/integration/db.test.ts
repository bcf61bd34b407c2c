import {
  applyImageSetOutcomes,
  createPool,
  getExperiment,
  imageSetCounts,
  loadMigrations,
  migrate,
  refreshExperimentCounts,
  registerExperiment,
  resetFailedImageSets,
  upsertImageSets,
  upsertProject,
  type Db,
  type NewExperiment,
  type NewImageSet,
} from '../../core/db';
import { defaultDispatch } from '../../core/model';
import { migrationDbConfig } from '../support/admin';
import { requireStack } from '../support/harness';

/**
 * The schema and the mirror's writes, in a throwaway database on the real MariaDB, as the migration
 * account (the runtime account cannot create databases or tables).
 */
jest.setTimeout(60_000);

const name = `cpflow_test_${Date.now().toString(36)}`;
let admin: Db;
let pool: Db;

beforeAll(async () => {
  requireStack();
  admin = createPool(await migrationDbConfig());
  await admin.query(`CREATE DATABASE ${name}`);
  pool = createPool(await migrationDbConfig(name));
});

afterAll(async () => {
  await pool?.end();
  await admin?.query(`DROP DATABASE IF EXISTS ${name}`);
  await admin?.end();
});

const sets = (n: number, prefix = 'S'): NewImageSet[] =>
  Array.from({ length: n }, (_, i) => ({
    key: `${prefix}${i + 1}`,
    metadata: { Well: `A${String(i + 1).padStart(2, '0')}` },
    files: ['DNA', 'Actin'].map((channel) => ({ channel, uri: `s3://b/${prefix}${i + 1}_${channel}.tif`, size: 10, checksum: `sha256:${i}${channel}` })),
  }));

const experiment = (projectId: number, exp: string): NewExperiment => ({
  projectId,
  name: exp,
  pipelineUri: null,
  pipelineSha256: null,
  engine: 'builtin',
  engineOptions: {},
  dispatch: defaultDispatch(),
  inputPrefix: 's3://b/',
  groupingRule: { pattern: '(?<Well>.+)_(?<Channel>.+)', channelGroup: 'Channel', channelMap: {} },
  sealed: true,
  maxFailedFraction: 0.5,
});

it('applies each migration exactly once, even when several processes start together', async () => {
  const results = await Promise.all([migrate(pool), migrate(pool), migrate(pool)]);
  const all = loadMigrations().map((m) => m.version);
  expect(all.length).toBeGreaterThanOrEqual(2);
  expect(results.flat().sort((a, b) => a - b)).toEqual(all);
  const rows = await pool.query<Array<{ version: number }>>('SELECT version FROM schema_migration ORDER BY version');
  expect(rows.map((r) => r.version)).toEqual(all);
  expect(await migrate(pool)).toEqual([]);
});

it('registers an experiment with its sets in one transaction, and upserts idempotently', async () => {
  const projectId = await upsertProject(pool, 'p', 'bucket-p');
  expect(await upsertProject(pool, 'p', 'bucket-p')).toBe(projectId);
  const id = await registerExperiment(pool, experiment(projectId, 'e1'), sets(1200));
  expect((await imageSetCounts(pool, id)).total).toBe(1200);
  await upsertImageSets(pool, id, sets(1200)); // the same sets again: nothing new
  await upsertImageSets(pool, id, sets(3, 'T')); // appended sets
  expect((await imageSetCounts(pool, id)).total).toBe(1203);
  const files = await pool.query<Array<{ n: number }>>(
    'SELECT COUNT(*) AS n FROM image_file f JOIN image_set s ON s.id = f.image_set_id WHERE s.experiment_id = ?',
    [id],
  );
  expect(files[0]!.n).toBe(1203 * 2);
});

it('leaves nothing behind when registration fails half-way', async () => {
  const projectId = await upsertProject(pool, 'p', 'bucket-p');
  const bad = sets(700);
  bad[650]!.files[0]!.channel = 'x'.repeat(300); // too long for image_file.channel: fails in the 2nd batch
  await expect(registerExperiment(pool, experiment(projectId, 'e-bad'), bad)).rejects.toThrow();
  const rows = await pool.query<Array<{ n: number }>>("SELECT COUNT(*) AS n FROM experiment WHERE name = 'e-bad'");
  expect(rows[0]!.n).toBe(0);
  const orphans = await pool.query<Array<{ n: number }>>('SELECT COUNT(*) AS n FROM image_set s LEFT JOIN experiment e ON e.id = s.experiment_id WHERE e.id IS NULL');
  expect(orphans[0]!.n).toBe(0);
});

it('mirrors outcomes idempotently and never moves a finished set back', async () => {
  const projectId = await upsertProject(pool, 'p', 'bucket-p');
  const id = await registerExperiment(pool, experiment(projectId, 'e2'), sets(3));
  const ids = (await pool.query<Array<{ id: number }>>('SELECT id FROM image_set WHERE experiment_id = ? ORDER BY id', [id])).map((r) => r.id);
  const done = {
    imageSetId: ids[0]!,
    status: 'done' as const,
    attempts: 2,
    results: [{ kind: 'table:Image', uri: 's3://b/cpflow/x/Image.csv', size: 5, checksum: 'sha256:a' }],
  };
  const failed = { imageSetId: ids[1]!, status: 'failed' as const, attempts: 1, error: 'undecodable image x.tif' };
  await applyImageSetOutcomes(pool, id, [done, failed]);
  await applyImageSetOutcomes(pool, id, [done, failed]); // a retried sync activity replays its batch
  await applyImageSetOutcomes(pool, id, [{ imageSetId: ids[0]!, status: 'running', attempts: 1 }]); // late, out of order
  const rows = await pool.query<Array<{ status: string; attempts: number; error: string | null }>>(
    'SELECT status, attempts, error FROM image_set WHERE experiment_id = ? ORDER BY id',
    [id],
  );
  expect(rows).toEqual([
    { status: 'done', attempts: 2, error: null },
    { status: 'failed', attempts: 1, error: 'undecodable image x.tif' },
    { status: 'pending', attempts: 0, error: null },
  ]);
  const results = await pool.query<Array<{ n: number }>>('SELECT COUNT(*) AS n FROM result_file WHERE experiment_id = ?', [id]);
  expect(results[0]!.n).toBe(1);
});

it('keeps the experiment counts incrementally, exact under replayed, overlapping and concurrent sync batches', async () => {
  const projectId = await upsertProject(pool, 'p', 'bucket-p');
  const id = await registerExperiment(pool, experiment(projectId, 'e-counts'), sets(300));
  const ids = (await pool.query<Array<{ id: number }>>('SELECT id FROM image_set WHERE experiment_id = ? ORDER BY id', [id])).map((r) => r.id);
  const stored = async () => {
    const e = await getExperiment(pool, id);
    return { total: e!.total_sets, done: e!.done_sets, failed: e!.failed_sets };
  };
  const recounted = async () => {
    const c = await imageSetCounts(pool, id);
    return { total: c.total, done: c.done, failed: c.failed };
  };
  const outcome = (setId: number, status: 'done' | 'failed' | 'running') => ({ imageSetId: setId, status, attempts: 1, ...(status === 'failed' ? { error: 'bad' } : {}) });
  // Sets 0..99 done, 100..119 failed, in batches of 40 as the outcome mirror sends them.
  const first = [...ids.slice(0, 100).map((s) => outcome(s, 'done')), ...ids.slice(100, 120).map((s) => outcome(s, 'failed'))];
  for (let i = 0; i < first.length; i += 40) await applyImageSetOutcomes(pool, id, first.slice(i, i + 40));
  expect(await stored()).toEqual({ total: 300, done: 100, failed: 20 });
  // Every batch replayed (a sync activity retried after its commit): nothing moves.
  for (let i = 0; i < first.length; i += 40) await applyImageSetOutcomes(pool, id, first.slice(i, i + 40));
  expect(await stored()).toEqual({ total: 300, done: 100, failed: 20 });
  // A batch naming a set twice, late "running" outcomes for finished sets, and a done set that fails on a rerun.
  await applyImageSetOutcomes(pool, id, [outcome(ids[200]!, 'done'), outcome(ids[200]!, 'done'), outcome(ids[0]!, 'running'), outcome(ids[100]!, 'running'), outcome(ids[1]!, 'failed')]);
  expect(await stored()).toEqual({ total: 300, done: 100, failed: 21 });
  // Concurrent, overlapping batches from two chunk children, each also replayed.
  const a = ids.slice(120, 220).map((s) => outcome(s, 'done'));
  const b = ids.slice(180, 300).map((s, i) => outcome(s, i % 5 === 0 ? 'failed' : 'done'));
  await Promise.all([a, b, a, b].map((batch) => applyImageSetOutcomes(pool, id, batch)));
  expect(await stored()).toEqual(await recounted());
  // Appends add to the total once; retry's reset takes the failed sets out of the failed count.
  await upsertImageSets(pool, id, sets(5, 'N'));
  await upsertImageSets(pool, id, sets(5, 'N'));
  expect((await stored()).total).toBe(305);
  const reset = await resetFailedImageSets(pool, id);
  expect(reset).toBeGreaterThan(0);
  expect(await stored()).toEqual(await recounted());
  expect((await stored()).failed).toBe(0);
  // The full recount (run on status changes) agrees with the increments.
  const before = await stored();
  await refreshExperimentCounts(pool, id);
  expect(await stored()).toEqual(before);
});
