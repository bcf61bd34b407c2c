/**
 * Every CellProfiler module runs (issue 7), against the real stack and the real CellProfiler venv:
 *
 * 1. The module-coverage pipeline (test/fixtures/module-coverage: 30 modules on generated images)
 *    through cpflow gives the same values as CellProfiler run directly over the same files, column for
 *    column; provenance records the environment (build, Python, sha256 of the package set).
 * 2. A deliberately broken module (FilterObjects asked for a feature no module measures: CellProfiler
 *    raises AssertionError on every attempt) fails each set once, attempts = 1, with the module named.
 * 3. A CellProfiler whose matplotlib lost `cm.get_cmap` (what matplotlib ≥ 3.9 does; simulated by a
 *    launcher that deletes it before CellProfiler starts) is caught by the installer's verification
 *    and by `cpflow doctor`, both naming the first module that breaks; through cpflow its sets fail
 *    once without retries. The real venv passes both.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parse } from 'csv-parse/sync';
import execa from 'execa';
import { probeCellProfilerEnvironment } from '../../activities/engines/cellprofiler/environment';
import { createCellProfilerEngine } from '../../activities/engines/cellprofiler';
import { PipelineRunError } from '../../activities/engines/types';
import { db } from '../../core/db';
import { GROUPING_PRESETS } from '../../core/grouping';
import { getBytes, layout } from '../../core/s3';
import { cellProfilerVenv, verifyEveryModule } from '../../deploy/local/cellprofiler';
import { MODULE_COVERAGE_IMAGES, MODULE_COVERAGE_PIPELINE, moduleCoverageSets } from '../../deploy/local/module-coverage';
import { submit } from '../../starter/submit';
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
import { cellProfilerForSuite } from '../support/cellprofiler-direct';

jest.setTimeout(900_000);

const { executable, maybe } = cellProfilerForSuite('module-coverage tests');

type Row = Record<string, string>;
const readCsv = (text: string | Buffer): Row[] => parse(text, { columns: true, skip_empty_lines: true }) as Row[];

/**
 * Columns that are not measurements of the images: run timing, where the files were (cpflow runs on
 * per-set copies; ImageSet_ImageSet is CellProfiler's compressed descriptor of the image set, which
 * holds those URLs), and run bookkeeping (ImageNumber is the set id in cpflow, CellProfiler's
 * position in a direct run; groups are one per invocation in cpflow, one per run directly).
 */
const NOT_COMPARED =
  /^(ImageNumber|ExecutionTime_.*|PathName_.*|ObjectsPathName_.*|URL_.*|ObjectsURL_.*|ImageSet_ImageSet|Group_Index|Group_Number|Group_Length)$/;

let work: string;
let workers: ManagedProcess | undefined;
let watcher: ManagedProcess | undefined;
let brokenLauncher: string;

beforeAll(() => {
  work = tempDir('module-coverage');
  if (!executable) return;
  // A launcher of the same venv whose matplotlib has no `cm.get_cmap`, as matplotlib ≥ 3.9.
  brokenLauncher = path.join(work, 'cellprofiler-without-get-cmap');
  const python = fs.readFileSync(executable, 'utf8').split('\n')[0];
  fs.writeFileSync(
    brokenLauncher,
    [
      python,
      'import sys, matplotlib.cm',
      'del matplotlib.cm.get_cmap',
      'from cellprofiler.__main__ import main',
      'sys.exit(main())',
      '',
    ].join('\n'),
    { mode: 0o755 },
  );
});

afterAll(async () => {
  await teardown(workers, watcher);
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

/** The generated images without ground_truth.json: what a lab would submit. */
function imagesFolder(): string {
  const dir = path.join(work, 'images');
  if (!fs.existsSync(dir)) {
    fs.mkdirSync(dir);
    for (const f of fs.readdirSync(MODULE_COVERAGE_IMAGES).filter((n) => n.endsWith('.tif'))) {
      fs.copyFileSync(path.join(MODULE_COVERAGE_IMAGES, f), path.join(dir, f));
    }
  }
  return dir;
}

async function ensureStackProcesses(): Promise<void> {
  requireStack();
  if (!workers) [workers, watcher] = await Promise.all([startWorkers({ CPFLOW_CELLPROFILER: executable }), startWatcher()]);
}

describe('module-coverage pipeline', () => {
  maybe('through cpflow gives the same values as CellProfiler run directly, column for column', async () => {
    await ensureStackProcesses();
    const folder = imagesFolder();
    const submitted = await submit({
      project: uniqueName('modcov'),
      name: 'module-coverage',
      folder,
      pipelineFile: MODULE_COVERAGE_PIPELINE,
      grouping: GROUPING_PRESETS.synthetic!.rule,
      engine: 'cellprofiler',
    });
    expect(submitted).toMatchObject({ engine: 'cellprofiler', imageSets: 2 });
    const e = await waitForExperiment(submitted.experimentId, undefined, 600_000);
    expect(e.error).toBeNull();
    expect(e.status).toBe('done');

    // CellProfiler directly over the same six files, in one run.
    const direct = path.join(work, 'direct');
    fs.mkdirSync(path.join(direct, 'out'), { recursive: true });
    const list = path.join(direct, 'files.txt');
    fs.writeFileSync(list, fs.readdirSync(folder).sort().map((f) => path.join(folder, f)).join('\n'));
    await execa(executable as string, [
      '-c', '-r', '-p', MODULE_COVERAGE_PIPELINE, '--file-list', list, '-o', path.join(direct, 'out'), '-t', direct,
      '-d', path.join(direct, 'done.txt'), '-e', 'imageio_reader',
    ], { env: { ...process.env, MPLBACKEND: 'Agg' } });
    expect(fs.readFileSync(path.join(direct, 'done.txt'), 'utf8').trim()).toBe('Complete');
    const directTable = (name: string) => readCsv(fs.readFileSync(path.join(direct, 'out', `${name}.csv`)));
    const directImages = directTable('Image');
    expect(directImages).toHaveLength(2);

    const pool = await db();
    const sets = await pool.query<Array<{ id: number; set_key: string; status: string; attempts: number }>>(
      'SELECT id, set_key, status, attempts FROM image_set WHERE experiment_id = ? ORDER BY set_key',
      [e.id],
    );
    expect(sets.map((s) => s.status)).toEqual(['done', 'done']);
    const tables = ['Image', 'Nuclei', 'Cells', 'Cytoplasm', 'Speckles', 'LargeNuclei'];
    let compared = 0;
    const environment = await probeCellProfilerEnvironment(executable as string, '5.0.0.dev784');
    for (const set of sets) {
      const prefix = layout.setPrefix(e.id, set.set_key);
      const cpflowImage = readCsv(await getBytes(e.bucket, `${prefix}Image.csv`));
      expect(cpflowImage).toHaveLength(1);
      // The direct run's image set with the same DNA file is this set.
      const directRow = directImages.find((r) => r.FileName_DNA === cpflowImage[0].FileName_DNA);
      expect(directRow).toBeDefined();
      const directNumber = directRow!.ImageNumber;
      for (const table of tables) {
        const mine = table === 'Image' ? cpflowImage : readCsv(await getBytes(e.bucket, `${prefix}${table}.csv`));
        const theirs = directTable(table).filter((r) => r.ImageNumber === directNumber);
        expect(mine.length).toBe(theirs.length);
        expect(mine.length).toBeGreaterThan(0);
        expect(Object.keys(mine[0]).sort()).toEqual(Object.keys(theirs[0]).sort());
        for (const [i, row] of mine.entries()) {
          expect(row.ImageNumber).toBe(String(set.id));
          for (const [column, value] of Object.entries(theirs[i])) {
            if (NOT_COMPARED.test(column)) continue;
            if (row[column] !== value) throw new Error(`${set.set_key} ${table} row ${i + 1} ${column}: cpflow ${row[column]}, direct ${value}`);
            compared++;
          }
        }
      }
      const provenance = JSON.parse((await getBytes(e.bucket, `${prefix}provenance.json`)).toString('utf8')) as {
        engine: { name: string; version: string; environment?: { build: string; python: string; packagesSha256: string } };
      };
      expect(provenance.engine).toEqual({ name: 'cellprofiler', version: '5.0.0.dev784', environment });
      expect(provenance.engine.environment?.python).toMatch(/^3\.(9|10)\./);
    }
    // The summary has both sets with the ground-truth nucleus count.
    const truth = JSON.parse(fs.readFileSync(path.join(MODULE_COVERAGE_IMAGES, 'ground_truth.json'), 'utf8')) as Record<string, { nuclei: unknown[] }>;
    const summary = await readCsvFromS3(e.summary_uri!);
    expect(summary.map((r) => Number(r.Count_Nuclei)).sort()).toEqual(Object.values(truth).map((t) => t.nuclei.length).sort());
    console.log(`module coverage through cpflow: ${compared} values equal to a direct CellProfiler run over ${tables.length} tables`);
    expect(compared).toBeGreaterThan(10_000);
  });

  maybe('a module that raises fails its set once, attempts 1, with the module and exception named', async () => {
    await ensureStackProcesses();
    const broken = path.join(work, 'broken-filter.cppipe');
    const text = fs.readFileSync(MODULE_COVERAGE_PIPELINE, 'utf8');
    const changed = text.replace('Select the measurement to filter by:AreaShape_Area', 'Select the measurement to filter by:AreaShape_NoSuchFeature');
    expect(changed).not.toBe(text);
    fs.writeFileSync(broken, changed);
    const brokenSubmit = {
      project: uniqueName('modcov-broken'),
      name: 'broken-filter',
      folder: imagesFolder(),
      pipelineFile: broken,
      grouping: GROUPING_PRESETS.synthetic!.rule,
      engine: 'cellprofiler' as const,
    };
    // Where CellProfiler is installed, submit already asks it, and it rejects the setting up front.
    await expect(submit(brokenSubmit)).rejects.toThrow(/CellProfiler rejects FilterObjects \(module \d+\): AreaShape_NoSuchFeature/);
    // Forced through, the run-time classification: the module raises, the set fails once.
    const submitted = await submit({ ...brokenSubmit, cellProfilerCheck: false });
    const e = await waitForExperiment(submitted.experimentId, undefined, 600_000);
    expect(e.status).toBe('failed');
    const pool = await db();
    const sets = await pool.query<Array<{ status: string; attempts: number; error: string }>>(
      'SELECT status, attempts, error FROM image_set WHERE experiment_id = ? ORDER BY set_key',
      [e.id],
    );
    expect(sets).toHaveLength(2);
    for (const s of sets) {
      expect(s.status).toBe('failed');
      expect(s.attempts).toBe(1);
      expect(s.error).toMatch(/module FilterObjects failed: AssertionError: Feature AreaShape_NoSuchFeature for Nuclei does not exist/);
    }
  });

  maybe('a pipeline whose rules match no file fails the set at once, saying so', async () => {
    const noMatch = path.join(work, 'no-match.cppipe');
    const text = fs.readFileSync(MODULE_COVERAGE_PIPELINE, 'utf8');
    fs.writeFileSync(noMatch, text.split('file does contain "_w').join('file does contain "_x'));
    expect(fs.readFileSync(noMatch, 'utf8')).not.toBe(text);
    const [set] = moduleCoverageSets();
    const err = await createCellProfilerEngine({ executable: executable as string })
      .run({ imageSets: [set], pipelinePath: noMatch, outDir: path.join(work, 'out-nomatch'), tmpDir: path.join(work, 'tmp-nomatch') })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PipelineRunError);
    expect((err as PipelineRunError).setKey).toBe(set.key);
    expect((err as Error).message).toMatch(/made no image set from the files MC_A01_s1_wDNA\.tif, .*NamesAndTypes rules/);
  });
});

describe('installer verification and doctor', () => {
  maybe('pass for the installed venv and name the first module that breaks without matplotlib.cm.get_cmap', async () => {
    const venv = path.dirname(path.dirname(executable as string));
    expect(fs.existsSync(path.join(venv, 'bin', 'python'))).toBe(true);
    const cache = tempDir('modcov-cache');
    const log: string[] = [];
    await verifyEveryModule(venv, cache, executable as string, (l) => log.push(l));
    expect(log.join('\n')).toMatch(/91 of 91 modules import, instantiate and reload headless/);
    expect(log.join('\n')).toMatch(/0 finding\(s\)/);
    expect(log.join('\n')).toMatch(/30 modules of the module-coverage pipeline run/);

    await expect(verifyEveryModule(venv, cache, brokenLauncher, () => undefined)).rejects.toThrow(
      /module MeasureObjectNeighbors breaks: AttributeError: module 'matplotlib.cm' has no attribute 'get_cmap'/,
    );

    // doctor: the real executable is ok (from the cache the verification left), the broken one FAILs.
    const env = { CPFLOW_CACHE_DIR: cache };
    const ok = await runCli(['doctor'], { ...env, CPFLOW_CELLPROFILER: executable }, 300_000);
    expect(ok.stdout).toMatch(/ok {4}CellProfiler .*30 modules of the module-coverage pipeline run \(CellProfiler 5\.0\.0\.dev784, Python 3\.(9|10)\./);
    const bad = await runCli(['doctor'], { ...env, CPFLOW_CELLPROFILER: brokenLauncher }, 300_000);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toMatch(/FAIL {2}CellProfiler .*module MeasureObjectNeighbors breaks: AttributeError: module 'matplotlib.cm' has no attribute 'get_cmap'/);
    // Cached per executable and environment: a second doctor run does not start the pipeline again.
    const started = Date.now();
    const again = await runCli(['doctor'], { ...env, CPFLOW_CELLPROFILER: brokenLauncher }, 300_000);
    expect(again.stdout).toMatch(/FAIL {2}CellProfiler .*MeasureObjectNeighbors.*checked 20/);
    console.log(`doctor with a cached module-coverage result: ${((Date.now() - started) / 1000).toFixed(1)} s`);
    fs.rmSync(cache, { recursive: true, force: true });
    expect(cellProfilerVenv(cache)).toBe(path.join(cache, 'cellprofiler-venv'));
  });

  maybe('sets of a CellProfiler without get_cmap fail once through cpflow, the module named, no retries', async () => {
    requireStack();
    const brokenWorkers = await startWorkers({ CPFLOW_CELLPROFILER: brokenLauncher });
    try {
      // Only the broken worker serves the cellprofiler queue for this experiment.
      await workers?.stop('SIGTERM');
      workers = undefined;
      if (!watcher) watcher = await startWatcher();
      const submitted = await submit({
        project: uniqueName('modcov-getcmap'),
        name: 'without-get-cmap',
        folder: imagesFolder(),
        pipelineFile: MODULE_COVERAGE_PIPELINE,
        grouping: GROUPING_PRESETS.synthetic!.rule,
        engine: 'cellprofiler',
      });
      const e = await waitForExperiment(submitted.experimentId, undefined, 600_000);
      expect(e.status).toBe('failed');
      const pool = await db();
      const sets = await pool.query<Array<{ status: string; attempts: number; error: string }>>(
        'SELECT status, attempts, error FROM image_set WHERE experiment_id = ?',
        [e.id],
      );
      expect(sets).toHaveLength(2);
      for (const s of sets) {
        expect(s).toMatchObject({ status: 'failed', attempts: 1 });
        expect(s.error).toMatch(/module MeasureObjectNeighbors failed: AttributeError: module 'matplotlib.cm' has no attribute 'get_cmap'/);
      }
    } finally {
      await brokenWorkers.stop('SIGTERM');
    }
  });
});

// The fixture images are what make_images.py writes (checked in; regenerated identically).
maybe('module-coverage images are the deterministic output of make_images.py', async () => {
  const out = tempDir('modcov-images');
  const python = path.join(path.dirname(executable as string), 'python');
  await execa(python, [path.join(MODULE_COVERAGE_IMAGES, '..', 'make_images.py'), out]);
  for (const f of fs.readdirSync(MODULE_COVERAGE_IMAGES)) {
    const sha = (p: string) => createHash('sha256').update(fs.readFileSync(p)).digest('hex');
    expect(`${f} ${sha(path.join(out, f))}`).toBe(`${f} ${sha(path.join(MODULE_COVERAGE_IMAGES, f))}`);
  }
  fs.rmSync(out, { recursive: true, force: true });
});
