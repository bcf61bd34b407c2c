/**
 * Engine routing and the run-time fixes, on the real stack with the real CellProfiler:
 *
 * - mixed workers: one worker process without CellProfiler (it polls no `cellprofiler` queue) and
 *   one with it; a CellProfiler experiment and a builtin one both finish with no set lost, and every
 *   CellProfiler set was analysed by the worker that has CellProfiler;
 * - `--batch-size 2` with a SaveImages that records no path: the batch's files cannot be attributed,
 *   so its sets run again one by one and every set keeps its own saved image (nothing dropped);
 *   `results --download --sets` fetches the per-set tables and files;
 * - a pipeline whose rules match none of the files: refused at submit with CellProfiler's words;
 *   forced through (--no-cellprofiler-check) it fails at run time after ONE attempt (deterministic),
 *   and `status` lists the failed sets with their reason.
 */
import fs from 'node:fs';
import path from 'node:path';
import { db, findExperimentByName } from '../../core/db';
import { getBytes, layout } from '../../core/s3';
import { generateIlluminationPlates } from '../fixtures/illumination-plates';
import { generateSyntheticPlate } from '../fixtures/synthetic-plate';
import {
  readCsvFromS3,
  requireStack,
  runCli,
  startProcess,
  startWatcher,
  startWorkers,
  teardown,
  tempDir,
  uniqueName,
  waitForExperiment,
  type ManagedProcess,
} from '../support/harness';
import { cellProfilerForSuite } from '../support/cellprofiler-direct';

jest.setTimeout(900_000);

const PIPELINES = path.join(__dirname, '..', 'fixtures', 'pipelines');
const { executable, skipReason, maybe } = cellProfilerForSuite('engine routing and batch tests');

let withoutCellProfiler: ManagedProcess | undefined;
let withCellProfiler: ManagedProcess | undefined;
let watcher: ManagedProcess | undefined;
let work: string;

beforeAll(async () => {
  if (skipReason) return;
  requireStack();
  work = tempDir('routing');
  // All pools, but no CellProfiler on this machine (empty CPFLOW_CELLPROFILER means none).
  withoutCellProfiler = await startWorkers({ CPFLOW_CELLPROFILER: '', CPFLOW_ANALYZE_SLOTS: '2' });
  // The analysis pool alone, with CellProfiler.
  withCellProfiler = startProcess('workers/cellprofiler.ts', [], { CPFLOW_CELLPROFILER: executable, CPFLOW_ANALYZE_SLOTS: '2' });
  await withCellProfiler.waitFor(/cpflow workers running/, 120_000);
  watcher = await startWatcher();
});

afterAll(async () => {
  await teardown(withoutCellProfiler, withCellProfiler, watcher);
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

async function submitJson(args: string[]): Promise<{ experimentId: number; warnings: string[] }> {
  const r = await runCli(['submit', ...args, '--json'], {}, 300_000);
  if (r.code !== 0) throw new Error(`submit failed (exit ${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as { experimentId: number; warnings: string[] };
}

maybe('routes CellProfiler sets only to the worker that has CellProfiler; a worker without it loses none', async () => {
  expect(withoutCellProfiler?.output()).toMatch(/queues cpflow, analyze-builtin, reduce;/);
  expect(withCellProfiler?.output()).toMatch(/queues cellprofiler, analyze-builtin;/);
  const images = path.join(work, 'routing');
  const sets = await generateIlluminationPlates({ outDir: images, plates: ['P1', 'P2'], wells: ['A01'], sites: 2, seed: 5 });
  const plate = path.join(work, 'builtin-plate');
  await generateSyntheticPlate({ outDir: plate, rows: 1, cols: 2, size: 128 });
  const project = uniqueName('routing');
  const [cp, builtin] = await Promise.all([
    submitJson([
      '--project', project, '--name', 'cellprofiler', '--folder', images, '--grouping', 'synthetic',
      '--pipeline', path.join(PIPELINES, 'illum-pooled.cppipe'), '--group-by', 'Plate', '--engine', 'cellprofiler',
    ]),
    submitJson(['--project', project, '--name', 'builtin', '--folder', plate, '--grouping', 'synthetic', '--engine', 'builtin']),
  ]);
  const [a, b] = await Promise.all([waitForExperiment(cp.experimentId, undefined, 600_000), waitForExperiment(builtin.experimentId, undefined, 600_000)]);
  expect([a.status, a.done_sets, a.failed_sets]).toEqual(['done', sets.length, 0]);
  expect([b.status, b.done_sets, b.failed_sets]).toEqual(['done', 2, 0]);
  const cellProfilerPid = withCellProfiler?.child.pid;
  for (const s of sets) {
    const p = JSON.parse((await getBytes(a.bucket, `${layout.setPrefix(a.id, s.key)}provenance.json`)).toString('utf8')) as { worker: { pid: number; attempt: number } };
    expect(p.worker).toMatchObject({ pid: cellProfilerPid, attempt: 1 });
  }
});

maybe('reruns a batch set by set when its saved files cannot be attributed, and downloads per-set results', async () => {
  const images = path.join(work, 'batch');
  const sets = await generateIlluminationPlates({ outDir: images, plates: ['P1'], wells: ['A01'], sites: 2, seed: 9 });
  const project = uniqueName('batch');
  const submitted = await submitJson([
    '--project', project, '--name', 'unrecorded', '--folder', images, '--grouping', 'synthetic',
    '--pipeline', path.join(PIPELINES, 'save-unrecorded.cppipe'), '--engine', 'cellprofiler', '--batch-size', '2',
  ]);
  expect(submitted.warnings.join('\n')).toMatch(/SaveImages \(module 6\) does not record its files.*run again set by set/);
  const e = await waitForExperiment(submitted.experimentId, undefined, 600_000);
  expect([e.status, e.error]).toEqual(['done', null]);
  const pool = await db();
  for (const s of sets) {
    const copy = s.file.replace('.tif', '_copy.png');
    const rows = await pool.query<Array<{ kind: string; uri: string }>>(
      'SELECT r.kind, r.uri FROM result_file r JOIN image_set i ON i.id = r.image_set_id WHERE i.experiment_id = ? AND i.set_key = ? ORDER BY r.uri',
      [e.id, s.key],
    );
    expect(rows).toContainEqual({ kind: 'file:png', uri: `s3://${e.bucket}/${layout.setPrefix(e.id, s.key)}${copy}` });
    const png = await getBytes(e.bucket, `${layout.setPrefix(e.id, s.key)}${copy}`);
    expect(png.subarray(1, 4).toString('latin1')).toBe('PNG');
    const [image] = await readCsvFromS3(`s3://${e.bucket}/${layout.setPrefix(e.id, s.key)}Image.csv`);
    expect(Number(image?.Count_Nuclei)).toBe(s.nuclei);
  }
  const download = path.join(work, 'download');
  const r = await runCli(['results', String(e.id), '--download', download, '--sets']);
  expect(r.code).toBe(0);
  for (const s of sets) {
    for (const f of ['Image.csv', 'Nuclei.csv', 'provenance.json', s.file.replace('.tif', '_copy.png')]) {
      expect(fs.existsSync(path.join(download, 'sets', s.key, f))).toBe(true);
    }
  }
  expect(fs.existsSync(path.join(download, 'summary.csv'))).toBe(true);
});

maybe('refuses rules that match no file at submit, and does not retry them at run time', async () => {
  const images = path.join(work, 'nomatch');
  await generateIlluminationPlates({ outDir: images, plates: ['P1'], wells: ['A01'], sites: 2, seed: 13 });
  const pipeline = path.join(work, 'no-match.cppipe');
  const text = fs.readFileSync(path.join(PIPELINES, 'save-unrecorded.cppipe'), 'utf8').replace('and (file does contain "wDNA")', 'and (file does contain "wHoechst")');
  fs.writeFileSync(pipeline, text);
  const project = uniqueName('nomatch');
  const common = ['--project', project, '--folder', images, '--grouping', 'synthetic', '--pipeline', pipeline, '--engine', 'cellprofiler'];

  const refused = await runCli(['submit', ...common, '--name', 'checked']);
  expect(refused.code).toBe(2);
  expect(refused.stderr).toMatch(/CellProfiler makes no image set from the files of image sets P1-A01-s1, P1-A01-s2: .*CellProfiler said: No images passed group filters/);
  expect(await findExperimentByName(await db(), project, 'checked')).toBeUndefined();

  const forced = await submitJson([...common, '--name', 'forced', '--no-cellprofiler-check']);
  const e = await waitForExperiment(forced.experimentId, undefined, 600_000);
  expect(e.status).toBe('failed');
  const rows = await (await db()).query<Array<{ attempts: number; error: string }>>('SELECT attempts, error FROM image_set WHERE experiment_id = ?', [e.id]);
  expect(rows).toHaveLength(2);
  for (const row of rows) {
    expect(row.attempts).toBe(1);
    expect(row.error).toMatch(/CellProfiler made no image set from the files .*CellProfiler said: No images passed group filters/s);
  }
  const status = await runCli(['status', String(e.id)]);
  expect(status.stdout).toMatch(/failed image sets \(2\):\n\s+P1-A01-s1 \(1 attempts\): image set P1-A01-s1: CellProfiler made no image set from the files/);
});
