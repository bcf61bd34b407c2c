/**
 * The cellprofiler engine's CLI path against the real CellProfiler CLI on the ExampleHuman example
 * (test/fixtures/examplehuman: pipeline, 3 images, reference output of CellProfiler 4.0.6).
 *
 * Tolerance: the reference says 289 nuclei and 22 PH3 objects. The pinned build 5.0.0.dev784 finds
 * 290 nuclei (and 290 cells / cytoplasms) and 22 PH3 objects with the identical final threshold
 * 0.0986016: the same segmentation threshold, with one object more surviving declumping and the
 * size/border filters (newer scikit-image watershed). Checked by running the `cellprofiler` CLI by
 * hand on the same three files, and re-checked below by a direct CLI run in the test itself. So object
 * counts must be within 1% of the reference (289 → 287..291), PH3 exact, the threshold within 1e-6,
 * and the engine's numbers must equal the direct CLI run's exactly.
 */
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'csv-parse/sync';
import execa from 'execa';
import { createCellProfilerEngine } from '../../activities/engines/cellprofiler';
import { ImageSetInputError, type EngineImageSet } from '../../activities/engines/types';
import { CELLPROFILER_BUILD, cellProfilerExecutable } from '../../deploy/local/cellprofiler';
import { cacheDir } from '../../deploy/local/state';
import { EXAMPLE_HUMAN } from '../support/fixtures';

const DATA = EXAMPLE_HUMAN;
const PIPELINE = path.join(DATA, 'ExampleHuman.cppipe');
const IMAGES = path.join(DATA, 'images');
const CHANNELS = ['DNA', 'PH3', 'cellbody'] as const;
const REFERENCE = { nuclei: 289, ph3: 22, threshold: 0.09860165 };

const envExecutable = process.env.CPFLOW_CELLPROFILER?.trim();
const exe = envExecutable && fs.existsSync(envExecutable) ? envExecutable : cellProfilerExecutable(cacheDir());
const haveData = fs.existsSync(PIPELINE);
const skipReason = !exe
  ? `CellProfiler is not installed (CPFLOW_CELLPROFILER unset and nothing in ${cacheDir()}/cellprofiler-venv` +
    `${process.env.CPFLOW_CELLPROFILER_UNAVAILABLE ? `; install failed: ${process.env.CPFLOW_CELLPROFILER_UNAVAILABLE}` : ''})`
  : !haveData
    ? `example data missing at ${DATA}`
    : undefined;
if (skipReason) console.warn(`SKIPPED cellprofiler integration tests: ${skipReason}`);
const cpIt = skipReason ? it.skip : it;

type Row = Record<string, string>;
function readCsv(file: string): Row[] {
  return parse(fs.readFileSync(file), { columns: true }) as Row[];
}

function md5(file: string): string {
  return createHash('md5').update(fs.readFileSync(file)).digest('hex');
}

let work: string;
beforeAll(() => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-cp-it-'));
});
afterAll(() => {
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

/**
 * An image set made of symlinks to the ExampleHuman images under `<work>/<folder>/`, with the well
 * in the file names replaced (`D03` → `well`), so copies differ by folder and/or name.
 */
function exampleCopy(key: string, folder: string, well = 'D03'): EngineImageSet {
  const dir = path.join(work, folder);
  fs.mkdirSync(dir, { recursive: true });
  const files = CHANNELS.map((channel, c) => {
    const target = path.join(dir, `AS_09125_050116030001_${well}f00d${c}.tif`);
    if (!fs.existsSync(target)) fs.symlinkSync(path.join(IMAGES, `AS_09125_050116030001_D03f00d${c}.tif`), target);
    return { channel, path: target };
  });
  return { key, metadata: { Well: well }, files };
}

/** The CLI path (CPFLOW_CELLPROFILER_WARM=0): the warm path is compared with it in cellprofiler-warm.test.ts. */
function engine() {
  if (!exe) throw new Error('unreachable: test runs only with an executable');
  return createCellProfilerEngine({ executable: exe, warm: false });
}

function expectCountsNearReference(image: Row): void {
  const nuclei = Number(image.Count_Nuclei);
  expect(Math.abs(nuclei - REFERENCE.nuclei)).toBeLessThanOrEqual(Math.floor(REFERENCE.nuclei * 0.01));
  expect(Number(image.Count_Cells)).toBe(nuclei);
  expect(Number(image.Count_Cytoplasm)).toBe(nuclei);
  expect(Number(image.Count_PH3)).toBe(REFERENCE.ph3);
  expect(Math.abs(Number(image.Threshold_FinalThreshold_Nuclei) - REFERENCE.threshold)).toBeLessThan(1e-6);
}

/** Checks one per-set folder: one Image row numbered 1, object tables consistent with its counts. */
function checkSetFolder(dir: string, dnaFileName: string): Row {
  const images = readCsv(path.join(dir, 'Image.csv'));
  expect(images).toHaveLength(1);
  const [image] = images;
  expect(image.ImageNumber).toBe('1');
  expect(image.FileName_DNA).toBe(dnaFileName);
  // The DNA channel really is the d0 file: CellProfiler's own MD5 of the image it loaded as DNA.
  expect(image.MD5Digest_DNA).toBe(md5(path.join(IMAGES, 'AS_09125_050116030001_D03f00d0.tif')));
  for (const [table, count] of [
    ['Nuclei.csv', 'Count_Nuclei'],
    ['PH3.csv', 'Count_PH3'],
    ['Cells.csv', 'Count_Cells'],
    ['Cytoplasm.csv', 'Count_Cytoplasm'],
  ] as const) {
    const rows = readCsv(path.join(dir, table));
    expect(rows).toHaveLength(Number(image[count]));
    expect(new Set(rows.map((r) => r.ImageNumber))).toEqual(new Set(['1']));
  }
  expect(fs.existsSync(path.join(dir, 'Experiment.csv'))).toBe(true);
  return image;
}

describe('cellprofiler engine (real CellProfiler)', () => {
  jest.setTimeout(15 * 60 * 1000);
  let singleSetSeconds = NaN;
  let single: Row | undefined;

  cpIt('reports the exact version of the installed build', async () => {
    const identity = await engine().identity();
    expect(identity.name).toBe('cellprofiler');
    const printed = execFileSync(exe as string, ['--version'], { encoding: 'utf8' }).trim().split('\n').pop();
    expect(identity.version).toBe(printed);
    if (!envExecutable) expect(identity.version).toBe(CELLPROFILER_BUILD);
  });

  cpIt('analyses ExampleHuman like the reference and like a direct CLI run', async () => {
    const set = exampleCopy('P1-D03-f00', 'single');
    const outDir = path.join(work, 'out-single');
    const progress: string[] = [];
    const started = Date.now();
    const result = await engine().run({
      imageSets: [set],
      pipelinePath: PIPELINE,
      outDir,
      tmpDir: path.join(work, 'tmp-single'),
      onProgress: (d) => progress.push(d),
    });
    singleSetSeconds = (Date.now() - started) / 1000;
    expect(result.engine.name).toBe('cellprofiler');
    expect(result.sets.map((s) => s.key)).toEqual(['P1-D03-f00']);
    expect(result.sets[0].files).toEqual(
      expect.arrayContaining(['Image.csv', 'Nuclei.csv', 'PH3.csv', 'Cells.csv', 'Cytoplasm.csv', 'Experiment.csv']),
    );
    // With one set, SaveImages' overlay belongs to it.
    expect(result.sets[0].files).toContain('AS_09125_050116030001_D03f00d0_Overlay.png');
    for (const f of result.sets[0].files) expect(fs.existsSync(path.join(outDir, 'P1-D03-f00', f))).toBe(true);
    expect(progress.some((p) => /IdentifyPrimaryObjects/.test(p))).toBe(true);

    single = checkSetFolder(path.join(outDir, 'P1-D03-f00'), 'AS_09125_050116030001_D03f00d0.tif');
    expectCountsNearReference(single);

    // The same files through the CLI directly, no engine in between.
    const direct = path.join(work, 'direct');
    fs.mkdirSync(path.join(direct, 'out'), { recursive: true });
    const list = path.join(direct, 'files.txt');
    fs.writeFileSync(list, CHANNELS.map((_, c) => path.join(IMAGES, `AS_09125_050116030001_D03f00d${c}.tif`)).join('\n'));
    await execa(exe as string, [
      '-c', '-r', '-p', PIPELINE, '--file-list', list, '-o', path.join(direct, 'out'), '-t', direct,
      '-d', path.join(direct, 'done.txt'), '-e', 'imageio_reader',
    ]);
    expect(fs.readFileSync(path.join(direct, 'done.txt'), 'utf8').trim()).toBe('Complete');
    const [cli] = readCsv(path.join(direct, 'out', 'Image.csv'));
    for (const column of ['Count_Nuclei', 'Count_PH3', 'Count_Cells', 'Count_Cytoplasm', 'Threshold_FinalThreshold_Nuclei']) {
      expect(single[column]).toBe(cli[column]);
    }
    // Object rows are byte-for-byte what CellProfiler wrote (the split only routes rows).
    expect(fs.readFileSync(path.join(outDir, 'P1-D03-f00', 'Nuclei.csv'), 'utf8')).toBe(
      fs.readFileSync(path.join(direct, 'out', 'Nuclei.csv'), 'utf8'),
    );
    console.log(
      `cellprofiler B=1: ${singleSetSeconds.toFixed(1)} s; Count_Nuclei=${single.Count_Nuclei} (reference ${REFERENCE.nuclei}), Count_PH3=${single.Count_PH3} (reference ${REFERENCE.ph3})`,
    );
  });

  cpIt('splits a batch into per-set folders, mapping image numbers by folder and file name', async () => {
    const sets = [
      exampleCopy('A-D03', 'batch/a'), // original names
      exampleCopy('B-D04', 'batch/b', 'D04'), // another well name
      exampleCopy('C-D03', 'batch/c'), // same names as A, other folder
    ];
    // Deliberately not in alphabetical order of keys or folders.
    const ordered = [sets[2], sets[0], sets[1]];
    const outDir = path.join(work, 'out-batch');
    const result = await engine().run({ imageSets: ordered, pipelinePath: PIPELINE, outDir, tmpDir: path.join(work, 'tmp-batch') });
    expect(result.sets.map((s) => s.key)).toEqual(['C-D03', 'A-D03', 'B-D04']);
    const a = checkSetFolder(path.join(outDir, 'A-D03'), 'AS_09125_050116030001_D03f00d0.tif');
    const b = checkSetFolder(path.join(outDir, 'B-D04'), 'AS_09125_050116030001_D04f00d0.tif');
    const c = checkSetFolder(path.join(outDir, 'C-D03'), 'AS_09125_050116030001_D03f00d0.tif');
    for (const row of [a, b, c]) {
      expectCountsNearReference(row);
      if (single) expect(row.Count_Nuclei).toBe(single.Count_Nuclei);
    }
    // Each row points at its own set's input folder (sets A and C share file names).
    expect(new Set([a.PathName_DNA, b.PathName_DNA, c.PathName_DNA]).size).toBe(3);
    // B's overlay has a unique name and is B's; A's and C's overlays collide on one name in the shared
    // output folder, so neither set gets it (documented in the engine).
    expect(result.sets.find((s) => s.key === 'B-D04')?.files).toContain('AS_09125_050116030001_D04f00d0_Overlay.png');
    expect(result.sets.find((s) => s.key === 'A-D03')?.files.some((f) => f.endsWith('.png'))).toBe(false);
    // The colliding overlay comes back as shared: the activity then reruns the batch's sets one by one,
    // where every file is the set's own.
    expect(result.shared).toEqual(['AS_09125_050116030001_D03f00d0_Overlay.png']);
  });

  cpIt('amortises start-up: per-set cost at B=8 vs B=1', async () => {
    const cp = engine();
    await cp.identity(); // the version probe is not part of a run's cost
    const timed = async (sets: EngineImageSet[], name: string) => {
      const outDir = path.join(work, `out-${name}`);
      const started = Date.now();
      const result = await cp.run({ imageSets: sets, pipelinePath: PIPELINE, outDir, tmpDir: path.join(work, `tmp-${name}`) });
      const seconds = (Date.now() - started) / 1000;
      expect(result.sets.map((s) => s.key)).toEqual(sets.map((s) => s.key));
      for (const set of sets) {
        const row = checkSetFolder(path.join(outDir, set.key), `AS_09125_050116030001_${set.metadata.Well}f00d0.tif`);
        expectCountsNearReference(row);
      }
      return seconds;
    };
    const well = (i: number) => `E${String(i + 1).padStart(2, '0')}`;
    const b1 = await timed([exampleCopy('P1-F01', 'b1', 'F01')], 'b1');
    const b8 = await timed(Array.from({ length: 8 }, (_, i) => exampleCopy(`P1-${well(i)}`, `b8/${i}`, well(i))), 'b8');
    console.log(
      `cellprofiler per-set cost (version probe excluded): B=1 ${b1.toFixed(1)} s/set, B=8 ${(b8 / 8).toFixed(1)} s/set (${b8.toFixed(1)} s total)` +
        `; first B=1 run incl. probe ${singleSetSeconds.toFixed(1)} s`,
    );
  });

  cpIt('fails an image set whose image does not decode with ImageSetInputError and stderr', async () => {
    const dir = path.join(work, 'corrupt');
    fs.mkdirSync(dir, { recursive: true });
    const files = CHANNELS.map((channel, c) => {
      const target = path.join(dir, `AS_09125_050116030001_D03f00d${c}.tif`);
      const bytes = fs.readFileSync(path.join(IMAGES, `AS_09125_050116030001_D03f00d${c}.tif`));
      // PH3 is cut after 1,000 bytes: a TIFF header whose image data is gone.
      fs.writeFileSync(target, c === 1 ? bytes.subarray(0, 1000) : bytes);
      return { channel, path: target };
    });
    const run = engine().run({
      imageSets: [{ key: 'BAD-1', metadata: {}, files }],
      pipelinePath: PIPELINE,
      outDir: path.join(work, 'out-corrupt'),
      tmpDir: path.join(work, 'tmp-corrupt'),
    });
    await expect(run).rejects.toBeInstanceOf(ImageSetInputError);
    const err = (await run.catch((e: unknown) => e)) as ImageSetInputError;
    expect(err.setKey).toBe('BAD-1');
    expect(err.message).toMatch(/could not load an image/);
    expect(err.message).toMatch(/done file says "Failure"/);
    expect(err.message).toMatch(/Traceback|Error/);
  });

  cpIt('fails a batch holding a broken set with ImageSetInputError naming no single set', async () => {
    const good = exampleCopy('GOOD', 'mixed/good');
    const dir = path.join(work, 'mixed', 'bad');
    fs.mkdirSync(dir, { recursive: true });
    const bad: EngineImageSet = {
      key: 'BAD-2',
      metadata: {},
      files: CHANNELS.map((channel, c) => {
        const target = path.join(dir, `AS_09125_050116030001_D05f00d${c}.tif`);
        const bytes = fs.readFileSync(path.join(IMAGES, `AS_09125_050116030001_D03f00d${c}.tif`));
        fs.writeFileSync(target, c === 0 ? bytes.subarray(0, 1000) : bytes);
        return { channel, path: target };
      }),
    };
    const err = await engine()
      .run({ imageSets: [good, bad], pipelinePath: PIPELINE, outDir: path.join(work, 'out-mixed'), tmpDir: path.join(work, 'tmp-mixed') })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ImageSetInputError);
    // The caller reruns the batch's sets one by one to find the broken one.
    expect((err as ImageSetInputError).setKey).toBeUndefined();
    expect((err as Error).message).toMatch(/image set #2 of a batch of 2 \(GOOD, BAD-2\)/);
  });

  cpIt('fails a missing image before starting CellProfiler', async () => {
    const set = exampleCopy('MISSING', 'missing');
    set.files[2] = { channel: 'cellbody', path: path.join(work, 'missing', 'nope.tif') };
    await expect(
      engine().run({ imageSets: [set], pipelinePath: PIPELINE, outDir: path.join(work, 'out-m'), tmpDir: path.join(work, 'tmp-m') }),
    ).rejects.toMatchObject({ name: 'ImageSetInputError', setKey: 'MISSING' });
  });

  /** Processes whose command line mentions `marker` (our attempt's tmp dir). */
  function processesMentioning(marker: string): string[] {
    const out = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
    return out.split('\n').filter((l) => l.includes(marker) && !l.includes('ps -eo'));
  }

  cpIt('kills CellProfiler when cancelled', async () => {
    const tmpDir = path.join(work, 'tmp-cancel');
    const controller = new AbortController();
    const run = engine().run({
      imageSets: [exampleCopy('CANCEL', 'cancel')],
      pipelinePath: PIPELINE,
      outDir: path.join(work, 'out-cancel'),
      tmpDir,
      signal: controller.signal,
    });
    // Wait until CellProfiler itself runs (the engine first probes the version).
    for (let waited = 0; processesMentioning(tmpDir).length === 0 && waited < 60_000; waited += 250) {
      await new Promise((r) => setTimeout(r, 250));
    }
    expect(processesMentioning(tmpDir).length).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 1000));
    const abortedAt = Date.now();
    controller.abort();
    await expect(run).rejects.toThrow(/cancel|abort/i);
    expect(Date.now() - abortedAt).toBeLessThan(5000);
    expect(processesMentioning(tmpDir)).toEqual([]);
  });

  cpIt('kills CellProfiler on timeout with a retryable error', async () => {
    const tmpDir = path.join(work, 'tmp-timeout');
    const run = engine().run({
      imageSets: [exampleCopy('SLOW', 'slow')],
      timeoutMs: 1500,
      pipelinePath: PIPELINE,
      outDir: path.join(work, 'out-timeout'),
      tmpDir,
    });
    const err = await run.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err).not.toBeInstanceOf(ImageSetInputError);
    expect((err as Error).message).toMatch(/timed out after 2 s/);
    expect(processesMentioning(tmpDir)).toEqual([]);
  });
});
