/**
 * The warm CellProfiler (activities/engines/cellprofiler/warm.ts) against the CLI path, on the real
 * CellProfiler venv, engine to engine (no services needed):
 *
 * 1. The same image sets through a warm process and through the CLI give identical tables, every
 *    column except timing and paths, and identical saved files: ExampleHuman (two sets in one batch),
 *    the module-coverage pipeline (30 modules) and a grouped pooled-illumination plate (the group's
 *    illumination function byte for byte).
 * 2. Deterministic pipeline errors classify exactly as on the CLI path: a module raising
 *    (PipelineRunError naming FilterObjects and its exception), an image that does not decode.
 * 3. The process life cycle: reused across runs (start-up paid once), replaced on a new pipeline
 *    when the pool is full, above the memory limit and after a crash (killed between runs: the next
 *    run starts a new one; killed during a run: a retryable failure, not the set's), killed with its
 *    process group on cancellation.
 */
import fs from 'node:fs';
import path from 'node:path';
import { createCellProfilerEngine } from '../../activities/engines/cellprofiler';
import { UNBOUND, WarmPool } from '../../activities/engines/cellprofiler/warm';
import { ImageSetInputError, PipelineRunError, type EngineGrouping, type EngineImageSet, type EngineRunResult } from '../../activities/engines/types';
import { pythonBeside } from '../../core/cellprofiler';
import { moduleCoverageSets, MODULE_COVERAGE_PIPELINE } from '../../deploy/local/module-coverage';
import { cellProfilerExecutable } from '../../deploy/local/cellprofiler';
import { cacheDir } from '../../deploy/local/state';
import { generateIlluminationPlates } from '../fixtures/illumination-plates';
import { readTable, type Row } from '../support/cellprofiler-direct';
import { EXAMPLE_HUMAN } from '../support/fixtures';
import { tempDir } from '../support/harness';

jest.setTimeout(600_000);

const envExecutable = process.env.CPFLOW_CELLPROFILER?.trim();
const executable = envExecutable && fs.existsSync(envExecutable) ? envExecutable : cellProfilerExecutable(cacheDir());
const python = executable ? pythonBeside(executable) : undefined;
const skipReason = !executable
  ? `CellProfiler is not installed (${process.env.CPFLOW_CELLPROFILER_UNAVAILABLE ?? 'CPFLOW_CELLPROFILER unset'})`
  : !python
    ? `no venv python beside ${executable}`
    : undefined;
if (skipReason) console.warn(`SKIPPED warm CellProfiler tests: ${skipReason}`);
const maybe = skipReason ? it.skip : it;

const EXAMPLE_PIPELINE = path.join(EXAMPLE_HUMAN, 'ExampleHuman.cppipe');
const PIPELINES = path.join(__dirname, '..', 'fixtures', 'pipelines');
const CHANNELS = ['DNA', 'PH3', 'cellbody'] as const;
/** Timing and where the files were (each run has its own scratch folders). */
const NOT_COMPARED = /^(ExecutionTime_.*|PathName_.*|ObjectsPathName_.*|URL_.*|ObjectsURL_.*|Metadata_FileLocation|ImageSet_ImageSet)$/;
/** Rows of the Experiment table (Key, Value) that hold the run's time or the files' locations (pickled image planes). */
const EXPERIMENT_KEYS_NOT_COMPARED = /^(Run_Timestamp|ImageSet_Zip_Dictionary)$/;

let work: string;
let pool: WarmPool;
beforeAll(() => {
  work = tempDir('cp-warm');
  if (python) pool = new WarmPool({ python, maxRssBytes: 4 * 1024 ** 3 }, 1);
});
afterAll(() => {
  pool?.close();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

let runs = 0;
async function run(
  mode: 'warm' | 'cli',
  pipelinePath: string,
  imageSets: EngineImageSet[],
  o: { grouping?: EngineGrouping; pool?: WarmPool; signal?: AbortSignal } = {},
): Promise<{ result: EngineRunResult; outDir: string; seconds: number }> {
  const engine = createCellProfilerEngine({ executable: executable as string, warm: mode === 'warm' ? (o.pool ?? pool) : false });
  const dir = path.join(work, `run-${++runs}-${mode}`);
  const started = Date.now();
  const result = await engine.run({
    imageSets,
    grouping: o.grouping,
    pipelinePath,
    outDir: path.join(dir, 'out'),
    tmpDir: path.join(dir, 'tmp'),
    signal: o.signal,
  });
  return { result, outDir: path.join(dir, 'out'), seconds: (Date.now() - started) / 1000 };
}

/** Every table and file of every set (and the group's files) equal between the two runs. */
function expectSameOutputs(warm: { result: EngineRunResult; outDir: string }, cli: { result: EngineRunResult; outDir: string }): number {
  expect(warm.result.sets).toEqual(cli.result.sets);
  expect(warm.result.shared ?? []).toEqual(cli.result.shared ?? []);
  let values = 0;
  for (const set of cli.result.sets) {
    for (const file of set.files) {
      const a = path.join(warm.outDir, set.key, file);
      const b = path.join(cli.outDir, set.key, file);
      if (!file.endsWith('.csv')) {
        expect({ file, same: fs.readFileSync(a).equals(fs.readFileSync(b)) }).toEqual({ file, same: true });
        continue;
      }
      const [mine, theirs] = [readTable(a), readTable(b)];
      expect({ file, rows: mine.length }).toEqual({ file, rows: theirs.length });
      theirs.forEach((expected: Row, i) => {
        const actual = mine[i] as Row;
        if (expected.Key !== undefined && EXPERIMENT_KEYS_NOT_COMPARED.test(expected.Key)) return;
        expect(Object.keys(actual).sort()).toEqual(Object.keys(expected).sort());
        const differing = Object.keys(expected).filter((c) => !NOT_COMPARED.test(c) && actual[c] !== expected[c]);
        expect({ file, row: i + 1, differing }).toEqual({ file, row: i + 1, differing: [] });
        values += Object.keys(expected).length - Object.keys(expected).filter((c) => NOT_COMPARED.test(c)).length;
      });
    }
  }
  for (const file of cli.result.shared ?? []) {
    const [a, b] = [path.join(warm.outDir, '@shared', file), path.join(cli.outDir, '@shared', file)];
    expect({ file, same: fs.readFileSync(a).equals(fs.readFileSync(b)) }).toEqual({ file, same: true });
  }
  return values;
}

function exampleSet(key: string, well: string, imageNumber: number): EngineImageSet {
  const dir = path.join(work, 'examplehuman', key);
  fs.mkdirSync(dir, { recursive: true });
  return {
    key,
    metadata: { Well: well },
    imageNumber,
    files: CHANNELS.map((channel, c) => {
      const target = path.join(dir, `AS_09125_050116030001_${well}f00d${c}.tif`);
      if (!fs.existsSync(target)) fs.symlinkSync(path.join(EXAMPLE_HUMAN, 'images', `AS_09125_050116030001_D03f00d${c}.tif`), target);
      return { channel, path: target };
    }),
  };
}

describe('warm CellProfiler against the CLI', () => {
  maybe('ExampleHuman: identical tables and saved files, start-up paid once', async () => {
    const sets = [exampleSet('EH-D03', 'D03', 7), exampleSet('EH-D04', 'D04', 8)];
    const cli = await run('cli', EXAMPLE_PIPELINE, sets);
    const first = await run('warm', EXAMPLE_PIPELINE, sets);
    const pid = pool.idleProcesses()[0]?.pid;
    const second = await run('warm', EXAMPLE_PIPELINE, sets);
    // The same process served both warm runs.
    expect(pool.idleProcesses().map((p) => p.pid)).toEqual([pid]);
    const values = expectSameOutputs(first, cli) + expectSameOutputs(second, cli);
    expect(values).toBeGreaterThan(1000);
    const nuclei = readTable(path.join(second.outDir, 'EH-D04', 'Image.csv'))[0]?.Count_Nuclei;
    expect(Number(nuclei)).toBeGreaterThan(280);
    console.log(`ExampleHuman, 2 sets: CLI ${cli.seconds.toFixed(1)} s, warm ${first.seconds.toFixed(1)} s (incl. start-up), then ${second.seconds.toFixed(1)} s; ${values} values equal`);
  });

  maybe('processes prestarted by a starting worker take the first pipeline asked of them, with identical outputs', async () => {
    const prestarted = new WarmPool({ python: python as string, maxRssBytes: 4 * 1024 ** 3 }, 2);
    try {
      expect(await prestarted.prestart()).toBe(2);
      const pids = prestarted.idleProcesses().map((p) => p.pid);
      expect(prestarted.idleProcesses().every((p) => p.key === UNBOUND)).toBe(true);
      const sets = [exampleSet('EH-D05', 'D05', 9)];
      const cli = await run('cli', EXAMPLE_PIPELINE, sets);
      const warm = await run('warm', EXAMPLE_PIPELINE, sets, { pool: prestarted });
      expect(expectSameOutputs(warm, cli)).toBeGreaterThan(500);
      // No process was started for the request: one of the two took the pipeline, the other is still free.
      expect(prestarted.size).toBe(2);
      expect(prestarted.idleProcesses().map((p) => p.pid).sort()).toEqual([...pids].sort());
      expect(prestarted.idleProcesses().map((p) => p.key === UNBOUND).sort()).toEqual([false, true]);
    } finally {
      prestarted.close();
    }
  });

  maybe('module-coverage pipeline (30 modules): identical tables and saved files', async () => {
    const sets = moduleCoverageSets().map((s, i) => ({ ...s, imageNumber: 100 + i }));
    const cli = await run('cli', MODULE_COVERAGE_PIPELINE, sets);
    const warm = await run('warm', MODULE_COVERAGE_PIPELINE, sets);
    const values = expectSameOutputs(warm, cli);
    expect(values).toBeGreaterThan(10_000);
    console.log(`module coverage, 2 sets: CLI ${cli.seconds.toFixed(1)} s, warm ${warm.seconds.toFixed(1)} s (new pipeline: new process); ${values} values equal`);
  });

  maybe('a grouped plate with a pooled illumination function: identical per-set tables and group files', async () => {
    const images = path.join(work, 'plates');
    const plate = await generateIlluminationPlates({ outDir: images, plates: ['P1'], wells: ['A01', 'A02'], sites: 2 });
    const sets: EngineImageSet[] = plate.map((s, i) => ({
      key: s.key,
      metadata: { Plate: s.plate, Well: s.well, Site: String(s.site) },
      imageNumber: 200 + i,
      files: [{ channel: 'DNA', path: path.join(images, s.file) }],
    }));
    const grouping = { key: 'P1', metadata: { Plate: 'P1' } };
    // Calculated over the plate and applied, per-set tables.
    const pooled = path.join(PIPELINES, 'illum-pooled.cppipe');
    expect(expectSameOutputs(await run('warm', pooled, sets, { grouping }), await run('cli', pooled, sets, { grouping }))).toBeGreaterThan(100);
    // Calculated over the plate and saved once at the last cycle: the group's file.
    const calculate = path.join(PIPELINES, 'illum-calculate.cppipe');
    const cli = await run('cli', calculate, sets, { grouping });
    expect(cli.result.shared?.length).toBeGreaterThan(0);
    expectSameOutputs(await run('warm', calculate, sets, { grouping }), cli);
  });

  maybe('a module that raises and an image that does not decode classify as on the CLI path', async () => {
    const broken = path.join(work, 'broken-filter.cppipe');
    const text = fs.readFileSync(MODULE_COVERAGE_PIPELINE, 'utf8');
    fs.writeFileSync(broken, text.replace('Select the measurement to filter by:AreaShape_Area', 'Select the measurement to filter by:AreaShape_NoSuchFeature'));
    const [set] = moduleCoverageSets();
    const failure = async (mode: 'warm' | 'cli', pipeline: string, s: EngineImageSet) => {
      const err = await run(mode, pipeline, [s]).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(PipelineRunError);
      const e = err as PipelineRunError;
      return { name: e.name, setKey: e.setKey, module: e.moduleName, exception: e.exception, headline: e.message.split('\n')[0] };
    };
    const cliModule = await failure('cli', broken, set as EngineImageSet);
    expect(cliModule.module).toBe('FilterObjects');
    expect(await failure('warm', broken, set as EngineImageSet)).toEqual(cliModule);

    const dir = path.join(work, 'corrupt');
    fs.mkdirSync(dir, { recursive: true });
    const corrupt: EngineImageSet = {
      key: 'BAD',
      metadata: {},
      files: CHANNELS.map((channel, c) => {
        const target = path.join(dir, `AS_09125_050116030001_D05f00d${c}.tif`);
        const bytes = fs.readFileSync(path.join(EXAMPLE_HUMAN, 'images', `AS_09125_050116030001_D03f00d${c}.tif`));
        fs.writeFileSync(target, c === 1 ? bytes.subarray(0, 1000) : bytes);
        return { channel, path: target };
      }),
    };
    const cliImage = await failure('cli', EXAMPLE_PIPELINE, corrupt);
    expect(cliImage.headline).toMatch(/could not load an image/);
    expect(await failure('warm', EXAMPLE_PIPELINE, corrupt)).toEqual(cliImage);
  });

  maybe('is replaced after a crash, above the memory limit, and killed with its group on cancellation', async () => {
    const [set] = moduleCoverageSets();
    const s = set as EngineImageSet;
    const pipeline = MODULE_COVERAGE_PIPELINE;
    const alive = (pid: number | undefined) => {
      if (pid === undefined) return false;
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };

    // Killed between runs: the next run starts a new process and succeeds.
    await run('warm', pipeline, [s]);
    const firstPid = pool.idleProcesses()[0]?.pid;
    expect(alive(firstPid)).toBe(true);
    process.kill(firstPid as number, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));
    await run('warm', pipeline, [s]);
    const secondPid = pool.idleProcesses()[0]?.pid;
    expect(secondPid).not.toBe(firstPid);

    // Killed during a run: a retryable engine failure (not the set's fault), and the process is gone.
    const during = run('warm', pipeline, [s]);
    await new Promise((r) => setTimeout(r, 1500));
    process.kill(secondPid as number, 'SIGKILL');
    const crash = await during.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(crash).toBeInstanceOf(Error);
    expect(crash).not.toBeInstanceOf(ImageSetInputError);
    expect((crash as Error).message).toMatch(/SIGKILL/);
    expect(pool.idleProcesses()).toEqual([]);

    // Above the memory limit after a run: not kept.
    const small = new WarmPool({ python: python as string, maxRssBytes: 1 }, 1);
    await run('warm', pipeline, [s], { pool: small });
    expect(small.size).toBe(0);

    // Cancelled: rejected at once, the whole process group gone.
    const controller = new AbortController();
    const cancelled = run('warm', pipeline, [s], { signal: controller.signal });
    await new Promise((r) => setTimeout(r, 2500));
    const [busy] = pool.busyProcesses();
    expect(alive(busy?.pid)).toBe(true);
    const abortedAt = Date.now();
    controller.abort();
    await expect(cancelled).rejects.toThrow(/cancel|abort/i);
    expect(Date.now() - abortedAt).toBeLessThan(5000);
    expect(alive(busy?.pid)).toBe(false);
    expect(pool.size).toBe(0);
  });
});
