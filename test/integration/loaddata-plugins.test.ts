/**
 * LoadData CSVs, CellProfiler plugins and bad input, on the real stack with the real CellProfiler:
 *
 * - ExampleHuman through `--load-data` (ExampleHuman-LoadData.cppipe: the same modules behind a
 *   LoadData module) equals the NamesAndTypes run of ExampleHuman.cppipe, column for column;
 * - a pipeline using a plugin module of our own (test/fixtures/plugins/measureimagesum.py) runs with
 *   CPFLOW_CELLPROFILER_PLUGINS on the worker, its numbers equal CellProfiler run directly and an
 *   independent computation, and provenance records the plugin file's sha256;
 * - malformed LoadData CSVs, unknown stages and cycles in experiment files, an unknown --group-by key
 *   and a --channel-map key no file has: one line naming the problem, exit 2, nothing registered.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { decodeGrayscale } from '../../activities/engines/builtin/decode';
import { db, findExperimentByName } from '../../core/db';
import { getBytes, layout } from '../../core/s3';
import { EXAMPLE_HUMAN as EXAMPLEHUMAN_DIR } from '../support/fixtures';
import { generateIlluminationPlates } from '../fixtures/illumination-plates';
import { compared, expectSameObjects, cellProfilerForSuite, runCellProfilerDirectly, type Row } from '../support/cellprofiler-direct';
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

const FIXTURES = path.join(__dirname, '..', 'fixtures');
const PLUGINS = path.join(FIXTURES, 'plugins');
const { executable, skipReason, maybe } = cellProfilerForSuite('LoadData and plugin runs');

let workers: ManagedProcess | undefined;
let watcher: ManagedProcess | undefined;
let work: string;

beforeAll(async () => {
  requireStack();
  work = tempDir('loaddata');
  if (skipReason) return;
  [workers, watcher] = await Promise.all([
    startWorkers({ CPFLOW_CELLPROFILER: executable, CPFLOW_CELLPROFILER_PLUGINS: PLUGINS, CPFLOW_ANALYZE_SLOTS: '2' }),
    startWatcher(),
  ]);
});

afterAll(async () => {
  await teardown(workers, watcher);
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

async function submitJson(args: string[], env: NodeJS.ProcessEnv = {}): Promise<number> {
  const r = await runCli(['submit', ...args, '--json'], env, 300_000);
  if (r.code !== 0) throw new Error(`submit failed (exit ${r.code}): ${r.stderr}`);
  return (JSON.parse(r.stdout) as { experimentId: number }).experimentId;
}

async function setTables(bucket: string, id: number, key: string, names: string[]): Promise<Record<string, Row[]>> {
  const out: Record<string, Row[]> = {};
  for (const name of names) out[name] = await readCsvFromS3(`s3://${bucket}/${layout.setPrefix(id, key)}${name}.csv`);
  return out;
}

/** How NamesAndTypes and LoadData differ in the Image table without a measurement differing. */
const LOADER_BOOKKEEPING = [/^(C|Frame|Series|SeriesName|T|Z)_/, /^ImageSet_ImageSet$/, /^Metadata_/, /^ExecutionTime_/, /^ModuleError_/];

maybe('ExampleHuman through --load-data equals the NamesAndTypes run, column for column', async () => {
  const project = uniqueName('loaddata');
  const [namesAndTypes, loadData] = await Promise.all([
    submitJson([
      '--project', project, '--name', 'names-and-types', '--folder', path.join(EXAMPLEHUMAN_DIR, 'images'), '--grouping', 'examplehuman',
      '--pipeline', path.join(EXAMPLEHUMAN_DIR, 'ExampleHuman.cppipe'), '--engine', 'cellprofiler',
    ]),
    submitJson([
      '--project', project, '--name', 'load-data', '--folder', EXAMPLEHUMAN_DIR, '--load-data', path.join(EXAMPLEHUMAN_DIR, 'load_data.csv'),
      '--pipeline', path.join(EXAMPLEHUMAN_DIR, 'ExampleHuman-LoadData.cppipe'), '--engine', 'cellprofiler',
    ]),
  ]);
  const [a, b] = await Promise.all([waitForExperiment(namesAndTypes, undefined, 600_000), waitForExperiment(loadData, undefined, 600_000)]);
  expect([a.status, a.error, b.status, b.error]).toEqual(['done', null, 'done', null]);

  const tables = ['Image', 'Nuclei', 'Cells', 'Cytoplasm', 'PH3'];
  const nt = await setTables(a.bucket, a.id, 'AS_09125_050116030001-D03-f00', tables);
  const ld = await setTables(b.bucket, b.id, 'AS_09125_050116030001-D03-00', tables);
  const [ntImage] = nt.Image as Row[];
  const [ldImage] = ld.Image as Row[];
  if (!ntImage || !ldImage) throw new Error('missing Image rows');
  // Every measurement column both runs have is equal; what only one has is loader bookkeeping.
  const usable = (c: string) => compared(c, LOADER_BOOKKEEPING);
  const ntColumns = Object.keys(ntImage).filter(usable).sort();
  const ldColumns = Object.keys(ldImage).filter(usable).sort();
  expect(ldColumns).toEqual(ntColumns);
  expect(ntColumns.length).toBeGreaterThan(20);
  expect(ntColumns.filter((c) => ntImage[c] !== ldImage[c])).toEqual([]);
  for (const row of [ntImage, ldImage]) {
    for (const [c, v] of Object.entries(row)) if (c.startsWith('ModuleError_')) expect(`${c}=${Number(v)}`).toBe(`${c}=0`);
  }
  // The LoadData run carries the CSV's metadata (LoadData reads the all-digit site "00" as the number 0).
  expect([ldImage.Metadata_Plate, ldImage.Metadata_Well, ldImage.Metadata_Site]).toEqual(['AS_09125_050116030001', 'D03', '0']);
  for (const t of tables.slice(1)) expectSameObjects(ld[t] as Row[], nt[t] as Row[], t);
  expect(Number(ntImage.Count_Nuclei)).toBeGreaterThan(280);
  // Path columns name the inputs' S3 locations, not the worker's deleted scratch folders.
  // (Uploaded folders live under inputs/<experiment id>/: one prefix per experiment.)
  expect(ldImage.PathName_DNA).toBe(`s3://${b.bucket}/${layout.experimentInputs(b.id)}images`);
  expect(ntImage.URL_DNA).toBe(`s3://${a.bucket}/${layout.experimentInputs(a.id)}AS_09125_050116030001_D03f00d0.tif`);
});

maybe('runs a pipeline with a plugin module from CPFLOW_CELLPROFILER_PLUGINS and records the plugin in provenance', async () => {
  const images = path.join(work, 'plugin-images');
  const sets = await generateIlluminationPlates({ outDir: images, plates: ['P1'], wells: ['A01'], sites: 2, seed: 3 });
  const pipeline = path.join(FIXTURES, 'pipelines', 'plugin-image-sum.cppipe');
  const project = uniqueName('plugin');
  const common = ['--project', project, '--folder', images, '--grouping', 'synthetic', '--pipeline', pipeline, '--engine', 'cellprofiler'];

  // Where submit runs without the plugin, CellProfiler cannot load the pipeline: refused, nothing registered.
  const refused = await runCli(['submit', ...common, '--name', 'without-plugin'], { CPFLOW_CELLPROFILER_PLUGINS: '' });
  expect(refused.code).toBe(2);
  expect(refused.stderr).toMatch(/MeasureImageSum.*CPFLOW_CELLPROFILER_PLUGINS/);
  expect(await findExperimentByName(await db(), project, 'without-plugin')).toBeUndefined();

  const id = await submitJson([...common, '--name', 'with-plugin'], { CPFLOW_CELLPROFILER_PLUGINS: PLUGINS });
  const e = await waitForExperiment(id, undefined, 600_000);
  expect([e.status, e.error]).toEqual(['done', null]);
  const direct = await runCellProfilerDirectly(executable as string, path.join(work, 'plugin-direct'), {
    pipeline,
    files: sets.map((s) => path.join(images, s.file)).sort(),
    pluginsDir: PLUGINS,
  });
  for (const set of sets) {
    const [row] = await readCsvFromS3(`s3://${e.bucket}/${layout.setPrefix(id, set.key)}Image.csv`);
    const expected = direct.table('Image').find((r) => r.FileName_DNA === set.file);
    expect(row?.CpflowPlugin_Sum_DNA).toBe(expected?.CpflowPlugin_Sum_DNA);
    // Independently: the sum of the 16-bit pixels scaled to 0–1, as CellProfiler scales them
    // (decoded by cpflow's own TIFF reader, not by CellProfiler).
    const image = await decodeGrayscale(path.join(images, set.file));
    const sum = image.data.reduce((a, v) => a + v, 0);
    expect(Math.abs(Number(row?.CpflowPlugin_Sum_DNA) - sum) / sum).toBeLessThan(1e-9);
    const provenance = JSON.parse((await getBytes(e.bucket, `${layout.setPrefix(id, set.key)}provenance.json`)).toString('utf8')) as {
      engine: { plugins?: Array<{ file: string; sha256: string }> };
    };
    const sha = crypto.createHash('sha256').update(fs.readFileSync(path.join(PLUGINS, 'measureimagesum.py'))).digest('hex');
    expect(provenance.engine.plugins).toEqual([{ file: 'measureimagesum.py', sha256: sha }]);
  }
});

describe('bad input: one line, exit 2, nothing registered', () => {
  const project = uniqueName('badinput');
  const cases: Array<[string, () => string[], RegExp]> = [
    [
      'a LoadData CSV with a PathName column but no FileName column',
      () => ['--folder', EXAMPLEHUMAN_DIR, '--load-data', csv('PathName_DNA,FileName_PH3\nimages,x.tif\n'), '--pipeline', path.join(EXAMPLEHUMAN_DIR, 'ExampleHuman-LoadData.cppipe')],
      /--load-data .*: column PathName_DNA has no FileName_DNA/,
    ],
    [
      'a LoadData row pointing to an absent file',
      () => ['--folder', EXAMPLEHUMAN_DIR, '--load-data', csv('Metadata_Well,FileName_DNA,PathName_DNA\nD03,nope.tif,images\n'), '--pipeline', path.join(EXAMPLEHUMAN_DIR, 'ExampleHuman-LoadData.cppipe')],
      /row 1: images\/nope\.tif \(DNA\) is not in --folder/,
    ],
    [
      'duplicated sets in a LoadData CSV',
      () => [
        '--folder', EXAMPLEHUMAN_DIR, '--load-data',
        csv('Metadata_Well,FileName_DNA,PathName_DNA\nD03,AS_09125_050116030001_D03f00d0.tif,images\nD03,AS_09125_050116030001_D03f00d1.tif,images\n'),
        '--pipeline', path.join(EXAMPLEHUMAN_DIR, 'ExampleHuman-LoadData.cppipe'),
      ],
      /rows 1 and 2 are the same image set \(Well=D03\): duplicated sets/,
    ],
    [
      'an unknown --group-by key of a LoadData CSV',
      () => ['--folder', EXAMPLEHUMAN_DIR, '--load-data', path.join(EXAMPLEHUMAN_DIR, 'load_data.csv'), '--pipeline', path.join(EXAMPLEHUMAN_DIR, 'ExampleHuman-LoadData.cppipe'), '--group-by', 'Plat'],
      /--group-by: Plat is not a metadata key of the image sets \(keys: Plate, Well, Site\)/,
    ],
    [
      'an experiment file with a cycle',
      () => ['--folder', path.join(EXAMPLEHUMAN_DIR, 'images'), '--grouping', 'examplehuman', '--experiment', yaml('stages:\n  - {name: a, pipeline: x.cppipe, groupBy: [Plate], inputs: [{stage: b, file: f, as: F}]}\n  - {name: b, pipeline: y.cppipe, groupBy: [Plate], inputs: [{stage: a, file: g, as: G}]}\n')],
      /--experiment .*: stages a, b take files from each other \(a cycle\)/,
    ],
    [
      'an experiment file naming an unknown stage',
      () => ['--folder', path.join(EXAMPLEHUMAN_DIR, 'images'), '--grouping', 'examplehuman', '--experiment', yaml('stages:\n  - {name: analysis, pipeline: x.cppipe, inputs: [{stage: illum, file: f, as: F}]}\n')],
      /--experiment .*: stage analysis takes files from unknown stage illum/,
    ],
    [
      'a --channel-map key no file has',
      () => ['--folder', path.join(EXAMPLEHUMAN_DIR, 'images'), '--grouping', 'examplehuman', '--channel-map', 'd0=DNA', '--pipeline', path.join(EXAMPLEHUMAN_DIR, 'ExampleHuman.cppipe')],
      /--channel-map: no file has the raw channel "d0" \(raw channels in the file names: 0, 1, 2\)/,
    ],
  ];
  let counter = 0;
  const csv = (text: string): string => {
    const file = path.join(work, `bad-${++counter}.csv`);
    fs.writeFileSync(file, text);
    return file;
  };
  const yaml = (text: string): string => {
    const file = path.join(work, `bad-${++counter}.yaml`);
    fs.writeFileSync(file, text);
    return file;
  };

  it.each(cases)('%s', async (_what, args, message) => {
    const name = `bad-${counter + 1}`;
    const r = await runCli(['submit', '--project', project, '--name', name, '--engine', 'cellprofiler', ...args()]);
    const lines = r.stderr.split('\n').filter((l) => l.startsWith('cpflow:'));
    expect({ code: r.code, lines: lines.length }).toEqual({ code: 2, lines: 1 });
    expect(lines[0]).toMatch(message);
    expect(await findExperimentByName(await db(), project, name)).toBeUndefined();
  });
});
