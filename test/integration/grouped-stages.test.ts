/**
 * Production-shaped CellProfiler runs through cpflow on the real stack with the real CellProfiler,
 * checked column by column against CellProfiler run directly on the same files:
 *
 * 1. a pooled-illumination pipeline (CorrectIlluminationCalculate "All", applied and measured in the
 *    same run) over 2 plates × 4 sites: refused at submit without --group-by; with --group-by Plate
 *    every measurement equals CellProfiler run on each plate's files; re-running skips unchanged
 *    groups and redoes a group whole when one of its inputs changed;
 * 2. a two-stage experiment (illumination per plate → analysis per site loading its plate's
 *    function as a NamesAndTypes channel) over 2 light plates × 2 sites and a heavy plate of 80
 *    sites: equals the two pipelines run by hand, and a light plate's analysis starts before the heavy
 *    plate's illumination ends.
 *
 * Images are synthetic with a known illumination field per plate (test/fixtures/illumination-plates.ts).
 */
import fs from 'node:fs';
import path from 'node:path';
import { db, findExperimentByName, resubmitExperiment } from '../../core/db';
import { getBytes, layout, listObjects, parseS3Uri, putBytes } from '../../core/s3';
import { generateIlluminationPlates, type IlluminationSet } from '../fixtures/illumination-plates';
import { expectSameObjects, expectSameRow, cellProfilerForSuite, runCellProfilerDirectly, type Row } from '../support/cellprofiler-direct';
import {
  readCsvFromS3,
  requireStack,
  runCli,
  startWatcher,
  startWorkers,
  teardown,
  tempDir,
  uniqueName,
  waitForExperiment,
  type ManagedProcess,
} from '../support/harness';

jest.setTimeout(900_000);

const PIPELINES = path.join(__dirname, '..', 'fixtures', 'pipelines');
const { executable, skipReason, maybe } = cellProfilerForSuite('grouped and staged CellProfiler runs');

let workers: ManagedProcess | undefined;
let watcher: ManagedProcess | undefined;
let work: string;

beforeAll(async () => {
  if (skipReason) return;
  requireStack();
  work = tempDir('grouped');
  [workers, watcher] = await Promise.all([startWorkers({ CPFLOW_CELLPROFILER: executable, CPFLOW_ANALYZE_SLOTS: '2' }), startWatcher()]);
});

afterAll(async () => {
  await teardown(workers, watcher);
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

async function submitJson(args: string[]): Promise<number> {
  const r = await runCli(['submit', ...args, '--json'], {}, 300_000);
  if (r.code !== 0) throw new Error(`submit failed (exit ${r.code}): ${r.stderr}`);
  return (JSON.parse(r.stdout) as { experimentId: number }).experimentId;
}

async function provenanceOf(bucket: string, key: string): Promise<{ startedAt: string; finishedAt: string; [k: string]: unknown }> {
  return JSON.parse((await getBytes(bucket, key)).toString('utf8')) as { startedAt: string; finishedAt: string };
}

/**
 * Compares cpflow's per-set tables of `sets` with a direct run's Image and Nuclei tables (rows matched
 * by file name). `ignore`: for a stage run set by set, Group_Number/Index/Length describe how the sets
 * were batched into CellProfiler invocations (here: all sites in one hand run), not the images.
 */
async function expectSetsEqualDirect(
  bucket: string,
  experimentId: number,
  stage: string,
  sets: IlluminationSet[],
  direct: { table: (n: string) => Row[] },
  ignore: RegExp[] = [],
  /** Nuclei the segmentation may miss against the generator's count: two touching nuclei merge. */
  truthTolerance = 0,
): Promise<void> {
  const directImages = direct.table('Image');
  const directNuclei = direct.table('Nuclei');
  for (const set of sets) {
    const prefix = `s3://${bucket}/${layout.setPrefix(experimentId, set.key, stage)}`;
    const [image] = await readCsvFromS3(`${prefix}Image.csv`);
    const expected = directImages.find((r) => r.FileName_DNA === set.file);
    if (!image || !expected) throw new Error(`${set.key}: no Image row (cpflow ${Boolean(image)}, direct ${Boolean(expected)})`);
    expectSameRow(image, expected, `${stage || 'experiment'} ${set.key} Image`, ignore);
    const nuclei = await readCsvFromS3(`${prefix}Nuclei.csv`);
    expectSameObjects(nuclei, directNuclei.filter((r) => r.ImageNumber === expected.ImageNumber), `${set.key} Nuclei`);
    expect(Math.abs(Number(image.Count_Nuclei) - set.nuclei)).toBeLessThanOrEqual(truthTolerance);
  }
}

maybe('runs a pooled illumination pipeline per plate with --group-by, equal to CellProfiler on each plate', async () => {
  const images = path.join(work, 'pooled');
  const sets = await generateIlluminationPlates({ outDir: images, plates: ['P1', 'P2'], wells: ['A01', 'A02'], sites: 2 });
  const project = uniqueName('grouped');
  const pipeline = path.join(PIPELINES, 'illum-pooled.cppipe');
  const common = ['--project', project, '--folder', images, '--grouping', 'synthetic', '--pipeline', pipeline, '--engine', 'cellprofiler'];

  // Without --group-by: refused in one line naming the module, the setting and the flag; nothing registered.
  const refused = await runCli(['submit', ...common, '--name', 'no-groups']);
  expect(refused.code).toBe(2);
  expect(refused.stderr.trim().split('\n').filter((l) => l.startsWith('cpflow:'))).toEqual([
    expect.stringMatching(/CorrectIlluminationCalculate \(module 5\) pools image sets \("Calculate function for each image individually, or based on all images\?" is "All"\).*--group-by Plate/),
  ]);
  expect(await findExperimentByName(await db(), project, 'no-groups')).toBeUndefined();
  // An unknown key is refused the same way.
  const unknown = await runCli(['submit', ...common, '--name', 'bad-key', '--group-by', 'Plat']);
  expect(unknown.code).toBe(2);
  expect(unknown.stderr).toMatch(/--group-by: Plat is not a metadata key of the image sets \(keys: Plate, Well, Site\)/);
  expect(await findExperimentByName(await db(), project, 'bad-key')).toBeUndefined();

  const id = await submitJson([...common, '--name', 'by-plate', '--group-by', 'Plate']);
  const e = await waitForExperiment(id, undefined, 600_000);
  expect(e.error).toBeNull();
  expect(e.status).toBe('done');

  // CellProfiler directly, once per plate, on exactly that plate's files.
  for (const plate of ['P1', 'P2']) {
    const plateSets = sets.filter((s) => s.plate === plate);
    const direct = await runCellProfilerDirectly(executable as string, path.join(work, `direct-${plate}`), {
      pipeline,
      files: plateSets.map((s) => path.join(images, s.file)).sort(),
    });
    await expectSetsEqualDirect(e.bucket, id, '', plateSets, direct);
  }
  // Split per set the same pipeline gives other numbers: the grouping is what makes them equal.
  const alone = await runCellProfilerDirectly(executable as string, path.join(work, 'alone'), { pipeline, files: [path.join(images, sets[1]!.file)] });
  const [groupedRow] = await readCsvFromS3(`s3://${e.bucket}/${layout.setPrefix(id, sets[1]!.key)}Image.csv`);
  expect(alone.table('Image')[0]?.Intensity_MeanIntensity_CorrDNA).not.toBe(groupedRow?.Intensity_MeanIntensity_CorrDNA);

  // One provenance per group lists its four sets; re-running skips unchanged groups and redoes a group
  // whole when one input changed.
  const p1Key = `${layout.groupPrefix(id, 'P1')}provenance.json`;
  const p2Key = `${layout.groupPrefix(id, 'P2')}provenance.json`;
  const [p1Before, p2Before] = await Promise.all([provenanceOf(e.bucket, p1Key), provenanceOf(e.bucket, p2Key)]);
  expect((p1Before.sets as unknown[]).length).toBe(4);
  const pool = await db();
  // A new acquisition replaces one of P2's images (other, valid bytes) and is registered again with its
  // checksum, as a lab system would: the analysis verifies inputs against what is registered.
  const dnaOf = async (key: string): Promise<string> =>
    (await pool.query<Array<{ uri: string }>>(
      `SELECT f.uri FROM image_file f JOIN image_set s ON s.id = f.image_set_id WHERE s.experiment_id = ? AND s.set_key = ? AND f.channel = 'DNA'`,
      [id, key],
    ))[0]!.uri;
  const replaced = parseS3Uri(await dnaOf('P2-A01-s2'));
  const donor = parseS3Uri(await dnaOf('P2-A02-s1'));
  const stored = await putBytes(replaced.bucket, replaced.key, await getBytes(donor.bucket, donor.key), 'image/tiff');
  await pool.query(
    `UPDATE image_file f JOIN image_set s ON s.id = f.image_set_id SET f.checksum = ?, f.size = ?
     WHERE s.experiment_id = ? AND s.set_key = ? AND f.channel = 'DNA'`,
    [stored.checksum, stored.size, id, 'P2-A01-s2'],
  );
  await pool.query(`UPDATE image_set SET status = 'pending' WHERE experiment_id = ?`, [id]);
  await resubmitExperiment(pool, id);
  const again = await waitForExperiment(id, (x) => x.status === 'done' && (x.finished_at?.getTime() ?? 0) > (e.finished_at?.getTime() ?? 0), 600_000);
  expect(again.status).toBe('done');
  const skipped = await pool.query<Array<{ set_key: string; skipped: number }>>('SELECT set_key, skipped FROM image_set WHERE experiment_id = ? ORDER BY set_key', [id]);
  expect(skipped.map((r) => [r.set_key, Number(r.skipped)])).toEqual(sets.map((s) => [s.key, s.plate === 'P1' ? 1 : 0]).sort());
  const [p1After, p2After] = await Promise.all([provenanceOf(e.bucket, p1Key), provenanceOf(e.bucket, p2Key)]);
  expect(p1After.finishedAt).toBe(p1Before.finishedAt);
  expect(p2After.finishedAt > p2Before.finishedAt).toBe(true);
});

maybe('runs illumination per plate then analysis per site, equal to the two pipelines by hand, with no barrier across plates', async () => {
  const images = path.join(work, 'staged');
  // P3 is the heavy plate (80 sites against 2): its illumination outlasts the others' by seconds
  // even with a warm CellProfiler, so a barrier across plates would show as every analysis starting
  // after it ends.
  const sets = [
    ...(await generateIlluminationPlates({ outDir: images, plates: ['P1', 'P2'], wells: ['A01'], sites: 2, seed: 11 })),
    ...(await generateIlluminationPlates({ outDir: images, plates: ['P3'], wells: ['A01', 'A02', 'A03', 'A04'], sites: 20, seed: 12 })),
  ];
  const experimentFile = path.join(work, 'stages.yaml');
  fs.writeFileSync(
    experimentFile,
    [
      'stages:',
      '  - name: illum',
      `    pipeline: ${path.join(PIPELINES, 'illum-calculate.cppipe')}`,
      '    groupBy: [Plate]',
      '  - name: analysis',
      `    pipeline: ${path.join(PIPELINES, 'analysis-with-illum.cppipe')}`,
      '    inputs:',
      '      - { stage: illum, file: IllumDNA.npy, as: IllumDNA }',
      '',
    ].join('\n'),
  );
  const project = uniqueName('staged');
  const id = await submitJson([
    '--project', project, '--name', 'illum-then-analysis', '--folder', images, '--grouping', 'synthetic',
    '--experiment', experimentFile, '--engine', 'cellprofiler', '--batch-size', '2',
  ]);
  const e = await waitForExperiment(id, undefined, 600_000);
  expect(e.error).toBeNull();
  expect(e.status).toBe('done');
  expect(e.total_sets).toBe(2 * sets.length);

  const status = await runCli(['status', String(id)]);
  expect(status.stdout).toMatch(new RegExp(`stage illum \\(groups by Plate\\): ${sets.length} done, 0 failed`));
  expect(status.stdout).toMatch(new RegExp(`stage analysis: ${sets.length} done, 0 failed`));

  // No barrier: some plate's analysis started before the last plate's illumination ended (worker timestamps).
  const illumEnds: string[] = [];
  for (const plate of ['P1', 'P2', 'P3']) {
    const p = await provenanceOf(e.bucket, `${layout.groupPrefix(id, plate, 'illum')}provenance.json`);
    console.log(`illumination of ${plate}: ${p.startedAt} → ${p.finishedAt}`);
    illumEnds.push(p.finishedAt);
  }
  const analysisStarts: string[] = [];
  for (const s of sets) analysisStarts.push((await provenanceOf(e.bucket, `${layout.setPrefix(id, s.key, 'analysis')}provenance.json`)).startedAt);
  const firstAnalysis = analysisStarts.sort()[0] as string;
  const lastIllum = illumEnds.sort()[illumEnds.length - 1] as string;
  console.log(`first analysis started ${firstAnalysis}; illumination ended ${illumEnds.join(', ')}`);
  expect(firstAnalysis < lastIllum).toBe(true);

  // By hand: the illumination pipeline on each plate's files, then the analysis pipeline on every
  // site with its plate's function beside it (one folder per site, as NamesAndTypes matches by order).
  const handLayout = path.join(work, 'by-hand', 'sites');
  const handFiles: string[] = [];
  for (const plate of ['P1', 'P2', 'P3']) {
    const plateSets = sets.filter((s) => s.plate === plate);
    const illum = await runCellProfilerDirectly(executable as string, path.join(work, 'by-hand', `illum-${plate}`), {
      pipeline: path.join(PIPELINES, 'illum-calculate.cppipe'),
      files: plateSets.map((s) => path.join(images, s.file)).sort(),
    });
    const byHand = fs.readFileSync(path.join(illum.outDir, 'IllumDNA.npy'));
    const viaCpflow = await getBytes(e.bucket, `${layout.groupPrefix(id, plate, 'illum')}IllumDNA.npy`);
    expect(viaCpflow.equals(byHand)).toBe(true);
    for (const s of plateSets) {
      const dir = path.join(handLayout, s.key);
      fs.mkdirSync(dir, { recursive: true });
      fs.symlinkSync(path.join(images, s.file), path.join(dir, s.file));
      fs.symlinkSync(path.join(illum.outDir, 'IllumDNA.npy'), path.join(dir, 'IllumDNA.npy'));
      handFiles.push(path.join(dir, s.file), path.join(dir, 'IllumDNA.npy'));
    }
  }
  const analysis = await runCellProfilerDirectly(executable as string, path.join(work, 'by-hand', 'analysis'), {
    pipeline: path.join(PIPELINES, 'analysis-with-illum.cppipe'),
    files: handFiles.sort(),
  });
  // Equal to CellProfiler run directly, value for value; against the generator's own nucleus counts
  // a set may be one short where two random nuclei touch (the heavy plate has 80 sets).
  await expectSetsEqualDirect(e.bucket, id, 'analysis', sets, analysis, [/^Group_(Number|Index|Length)$/], 1);

  // Reduce: the final stage's tables make summary.csv; the illumination stage wrote none.
  const summary = await readCsvFromS3(e.summary_uri as string);
  expect(summary).toHaveLength(sets.length);
  const results = await runCli(['results', String(id)]);
  expect(results.stdout.match(/group-file:npy/g)).toHaveLength(3);
  const stageSummaries: string[] = [];
  for await (const o of listObjects(e.bucket, layout.results(id, 'stages/'))) stageSummaries.push(o.key);
  expect(stageSummaries).toEqual([]);
});
