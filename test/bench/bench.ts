import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { z } from 'zod';
import type { Client } from '@temporalio/client';
import { closeDb, db, recentBatching } from '../../core/db';
import { GROUPING_PRESETS } from '../../core/grouping';
import { gitCommit } from '../../core/version';
import { bucketForProject } from '../../core/naming';
import { deletePrefix } from '../../core/s3';
import { createCellProfilerEngine } from '../../activities/engines/cellprofiler';
import type { EngineImageSet } from '../../activities/engines/types';
import { ensureStackUp } from '../../deploy/local/services';
import { ensureWorkflowBundle } from '../../workers/workflow-bundle';
import { submit } from '../../starter/submit';
import { connectClient } from '../../core/temporal';
import { runExperiment, terminateLeftovers, type ExperimentTiming } from './experiment-run';
import { withWorkers, WorkerSet, type PoolReport } from './workers';
import { cellProfilerOverhead } from './cellprofiler-overhead';
import { seedAnalysedExperiment } from './reduce-seed';
import { sideBySide } from './side-by-side';
import { BENCH_DATABASE, BENCH_NAMESPACE, ensureBenchDatabase, ensureBenchNamespace, preparePrivateStack } from './isolation';
import { cacheDir } from '../../deploy/local/services';
import { BENCH_PROJECT, cachedPlate, plateFor, registerNoopExperiment, setCount } from './fixtures';
import { profilesBench } from './profiles';
import { machineBusySeconds, REPO_ROOT, lockStack, scratchDir, startTsProcess, waitForQuiet } from './processes';
import { EXAMPLE_HUMAN } from '../support/fixtures';

/**
 * `npm run bench`: cpflow's cost measured on the real local stack.
 *   (i)   overhead ratio: cpflow (workflow start → reduce done) / `cpflow analyze-local`, builtin engine,
 *         same images, same concurrency;
 *   (ii)  dispatch throughput with the no-op engine;
 *   (iii) a scale run (default 20,000 sets; 100,000 works): wall time, largest history of any execution,
 *         peak RSS of each worker process;
 *   (iv)  the reduce worker's peak RSS and rows/s on that scale run;
 *   (v)   CellProfiler's per-set cost at batch size 1 and 8 on ExampleHuman, when it is installed;
 *   (vi)  the profiles step's peak RSS (Node gather and CytoTable + pycytominer) over synthetic tables
 *         of `--profiles-sets` image sets (default 100,000), no stack needed (test/bench/profiles.ts).
 * Prints a table with the goals beside the figures and writes `.bench/results-<timestamp>.json`.
 */

const GOALS = {
  overheadRatio: 1.1,
  cellProfilerOverheadRatio: 1.15,
  peerRatio: 2,
  reduceRowsPerSecond: 2_000,
  setsPerSecond: 100,
  historyEvents: 10_240,
  workerRssBytes: 1024 ** 3,
  reduceRssBytes: 512 * 1024 ** 2,
  profilesRssBytes: 1024 ** 3,
};

const SECTIONS = ['i', 'ii', 'iii', 'iv', 'v', 'vi', 'vii', 'viii'] as const;
type Section = (typeof SECTIONS)[number];

const int = (name: string) => (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a positive integer, got "${v}"`);
  return n;
};

const optionsSchema = z.object({
  only: z.array(z.enum(SECTIONS)),
  scale: z.number().int().positive(),
  sets: z.number().int().positive(),
  jobs: z.number().int().positive(),
  size: z.number().int().min(64).max(2048),
  dispatchSets: z.number().int().positive(),
  noopSlots: z.number().int().positive(),
  dispatchBatch: z.number().int().min(1).max(64).optional(),
  scaleBatch: z.number().int().min(1).max(64).optional(),
  window: z.number().int().positive().optional(),
  chunkSize: z.number().int().positive().optional(),
  cpSingles: z.number().int().positive(),
  profilesSets: z.number().int().positive(),
  cpSets: z.number().int().min(1),
  sideSets: z.number().int().positive(),
  sideRuns: z.number().int().positive(),
  peerWorkers: z.number().int().positive(),
  peerConcurrency: z.number().int().positive(),
  peerPool: z.enum(['prefork', 'threads']),
  drillSets: z.number().int().positive(),
  privateStack: z.boolean(),
  keepData: z.boolean(),
  profileWorkers: z.string().optional(),
  out: z.string(),
});
type BenchOptions = z.infer<typeof optionsSchema>;

function parseArgs(argv: string[]): BenchOptions {
  const program = new Command('npm run bench --')
    .option('--only <list>', `sections to run, comma separated (${SECTIONS.join(',')})`, SECTIONS.join(','))
    .option('--scale <n>', 'image sets in the scale run (iii, iv)', int('--scale'), 20_000)
    .option('--sets <n>', 'image sets in the overhead comparison (i)', int('--sets'), 240)
    .option('-j, --jobs <n>', 'analysis concurrency in (i): analyze-local -j and CPFLOW_ANALYZE_SLOTS', int('--jobs'), 2)
    .option('--size <px>', 'synthetic image width/height in (i)', int('--size'), 512)
    .option('--dispatch-sets <n>', 'image sets in the dispatch run (ii)', int('--dispatch-sets'), 1_000)
    .option('--noop-slots <n>', 'CPFLOW_ANALYZE_SLOTS of the no-op worker in (ii)–(iv)', int('--noop-slots'), 32)
    .option('--dispatch-batch <n>', 'image sets per activity in (ii) (default: adaptive, as `cpflow submit` without --batch-size)', int('--dispatch-batch'))
    .option('--scale-batch <n>', 'image sets per activity in (iii)/(iv) (default: adaptive)', int('--scale-batch'))
    .option('--window <n>', 'image sets in flight per experiment in (ii)–(iv) (default: the workflow default)', int('--window'))
    .option('--chunk-size <n>', 'image sets per chunk child in (ii)–(iv) (default: the workflow default)', int('--chunk-size'))
    .option('--cp-singles <n>', 'image sets run one per CellProfiler invocation in (v)', int('--cp-singles'), 3)
    .option('--profiles-sets <n>', 'synthetic image sets (30 nuclei each) through the profiles step in (viii)', int('--profiles-sets'), 100_000)
    .option('--cp-sets <n>', 'ExampleHuman copies in the CellProfiler overhead ratio (vi)', int('--cp-sets'), 16)
    .option('--side-sets <n>', 'image sets per run in the side-by-side with the Celery peer (vii)', int('--side-sets'), 1_000)
    .option('--side-runs <n>', 'runs of each side in (vii), alternating', int('--side-runs'), 3)
    .option('--peer-workers <n>', 'Celery worker processes of the peer in (vii)', int('--peer-workers'), 2)
    .option('--peer-concurrency <n>', 'pool size of each Celery worker in (vii) (workers × concurrency = sets in flight)', int('--peer-concurrency'), 8)
    .option('--peer-pool <pool>', "the peer's Celery pool in (vii): prefork (Celery's default) or threads", 'prefork')
    .option('--drill-sets <n>', 'image sets in each kill -9 drill of (vii)', int('--drill-sets'), 1_000)
    .option('--private-stack', 'run on a second local stack of its own (~/.cache/cpflow-bench), safe from fault drills on the shared one', false)
    .option('--keep-data', "keep the objects of the bench project's bucket at the end (by default they are deleted: a full run leaves about 7 GB)", false)
    .option('--profile-workers <dir>', 'write V8 CPU profiles (.cpuprofile) of the worker processes into <dir>')
    .option('--out <dir>', 'where results JSON goes', path.join(REPO_ROOT, '.bench'))
    .parse(argv);
  const o = program.opts<Record<string, unknown>>();
  return optionsSchema.parse({ ...o, only: String(o.only).split(',').map((s) => s.trim()).filter(Boolean) });
}

const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};
const mib = (bytes: number | undefined): string => (bytes === undefined ? '?' : `${(bytes / 1024 ** 2).toFixed(0)} MiB`);
const secs = (s: number): string => `${s.toFixed(1)} s`;

interface Row {
  section: string;
  metric: string;
  value: string;
  goal: string;
  met: boolean | undefined;
}

const stamp = (): string => new Date().toISOString().replace(/[:.]/g, '-');

// ---------------------------------------------------------------------------------------------
// (i) overhead

interface OverheadResult {
  sets: number;
  imageSize: number;
  jobs: number;
  localSeconds: number;
  localPeakRssBytes: number | undefined;
  cpflow: ExperimentTiming;
  ratio: number;
  pools: PoolReport[];
  cpu: Array<{ name: string; cpuSeconds: number }>;
  /**
   * Busy CPU-seconds of the whole machine during each run (/proc/stat): on a saturated machine the wall
   * ratio follows the ratio of these. (The local process's own CPU cannot be read by pid once it has exited.)
   */
  machineCpuSeconds: { local: number; cpflow: number };
  workerRestarts: string[];
}

const analyzeLocalOutput = z.object({ done: z.number(), failed: z.number(), seconds: z.number() });

async function overhead(client: Client, o: BenchOptions): Promise<OverheadResult> {
  const spec = plateFor(o.sets, o.size);
  const folder = await cachedPlate(path.join(o.out, 'plates'), spec, log);
  const sets = setCount(spec);
  const rule = GROUPING_PRESETS.synthetic?.rule;
  if (!rule) throw new Error('grouping preset "synthetic" is missing');

  log(`(i) analyze-local: ${sets} sets, -j ${o.jobs} …`);
  const localOut = scratchDir('local');
  const busyBeforeLocal = machineBusySeconds();
  const local = startTsProcess('analyze-local', 'starter/cli.ts', ['analyze-local', folder, '--grouping', 'synthetic', '-j', String(o.jobs), '--out', localOut, '--json'], {});
  const code = await local.exited;
  const localMachineCpu = machineBusySeconds() - busyBeforeLocal;
  fs.rmSync(localOut, { recursive: true, force: true });
  if (code !== 0) throw new Error(`analyze-local exited ${code}:\n${local.output().slice(-2000)}`);
  const localResult = analyzeLocalOutput.parse(JSON.parse(local.output().slice(local.output().indexOf('{'))));
  if (localResult.done !== sets) throw new Error(`analyze-local analysed ${localResult.done} of ${sets} sets`);
  log(`  analyze-local: ${secs(localResult.seconds)}`);

  log(`(i) cpflow: uploading and registering the same ${sets} sets …`);
  const submitted = await submit({
    project: BENCH_PROJECT,
    name: `overhead-${stamp()}`,
    folder,
    grouping: rule,
    engine: 'builtin',
  });
  const slots = String(o.jobs);
  let cpflowMachineCpu = 0;
  const run = await withWorkers(client, { cellprofiler: { CPFLOW_ANALYZE_SLOTS: slots } }, async () => {
    const busyBefore = machineBusySeconds();
    const timing = await runExperiment(client, submitted.experimentId, { timeoutMs: 3_600_000, label: 'overhead', log });
    cpflowMachineCpu = machineBusySeconds() - busyBefore;
    return timing;
  });
  log(`  cpflow: ${secs(run.result.wallSeconds)} (analysis ${secs(run.result.analysisSeconds)}, reduce ${secs(run.result.reduceSeconds)})`);
  return {
    sets,
    imageSize: o.size,
    jobs: o.jobs,
    localSeconds: localResult.seconds,
    localPeakRssBytes: local.peakRssBytes(),
    cpflow: run.result,
    ratio: run.result.wallSeconds / localResult.seconds,
    pools: run.pools,
    cpu: run.cpu,
    machineCpuSeconds: { local: Math.round(localMachineCpu * 10) / 10, cpflow: Math.round(cpflowMachineCpu * 10) / 10 },
    workerRestarts: run.restarts,
  };
}

// ---------------------------------------------------------------------------------------------
// (ii)–(iv) no-op runs

interface NoopRunResult {
  sets: number;
  registerSeconds: number;
  noopSlots: number;
  /** `--dispatch-batch`/`--scale-batch`, or undefined: adaptive. */
  batchSize: number | undefined;
  /** What the run used last (MariaDB's batch_size of the newest analysed sets) and the engine time it measured. */
  chosen?: { batchSize: number; secondsPerSet: number };
  timing: ExperimentTiming;
  setsPerSecond: number;
  endToEndSetsPerSecond: number;
  reduceRowsPerSecond: number;
  pools: PoolReport[];
  cpu: Array<{ name: string; cpuSeconds: number }>;
  workerRestarts: string[];
}

async function noopRun(client: Client, label: string, sets: number, batchSize: number | undefined, o: BenchOptions): Promise<NoopRunResult> {
  log(`${label}: registering ${sets.toLocaleString('en')} image sets for the no-op engine …`);
  const registered = await registerNoopExperiment(`${label.replace(/[^a-z0-9]+/gi, '-')}-${sets}-${stamp()}`, sets, {
    batchSize,
    window: o.window,
    chunkSize: o.chunkSize,
  });
  log(`  registered in ${secs(registered.seconds)} (experiment ${registered.experimentId})`);
  const run = await withWorkers(
    client,
    { cellprofiler: { CPFLOW_ANALYZE_SLOTS: String(o.noopSlots), CPFLOW_ENGINE_OVERRIDE: 'noop' } },
    () => runExperiment(client, registered.experimentId, { timeoutMs: Math.max(1_800_000, sets * 200), label, log }),
  );
  const t = run.result;
  const chosen = await recentBatching(await db(), registered.experimentId, 50);
  const chosenNote = chosen ? `; last batches of ${chosen.batchSize} sets, ${(chosen.secondsPerSet * 1000).toFixed(1)} ms engine time per set` : '';
  log(`  ${label}: ${t.status}, ${secs(t.wallSeconds)} (analysis ${secs(t.analysisSeconds)}, reduce ${secs(t.reduceSeconds)}), max history ${t.maxHistoryLength}${chosenNote}`);
  return {
    sets,
    registerSeconds: registered.seconds,
    ...(chosen ? { chosen: { batchSize: chosen.batchSize, secondsPerSet: chosen.secondsPerSet } } : {}),
    noopSlots: o.noopSlots,
    batchSize,
    timing: t,
    setsPerSecond: sets / t.analysisSeconds,
    endToEndSetsPerSecond: sets / t.endToEndSeconds,
    reduceRowsPerSecond: sets / t.reduceSeconds,
    pools: run.pools,
    cpu: run.cpu,
    workerRestarts: run.restarts,
  };
}

// ---------------------------------------------------------------------------------------------
/** `adaptive (last 8)` or the explicit size. */
function batchLabel(r: Pick<NoopRunResult, 'batchSize' | 'chosen'>): string {
  return r.batchSize !== undefined ? String(r.batchSize) : `adaptive${r.chosen ? ` (last ${r.chosen.batchSize})` : ''}`;
}

// ---------------------------------------------------------------------------------------------
// (iv) reduce alone, over seeded sets

interface ReduceOnlyResult {
  sets: number;
  seedSeconds: number;
  seconds: number;
  rowsPerSecond: number;
  peakRssBytes: number | undefined;
  cpuSeconds: number;
}

async function reduceOnly(sets: number): Promise<ReduceOnlyResult> {
  log(`(iv) seeding ${sets.toLocaleString('en')} analysed no-op sets (tables in S3, outcomes in MariaDB) …`);
  const seeded = await seedAnalysedExperiment(`reduce-${sets}-${stamp()}`, sets, log);
  log(`  seeded in ${secs(seeded.seconds)}; reducing in a process of its own …`);
  const child = startTsProcess('reduce', 'test/bench/reduce-child.ts', [String(seeded.experimentId)], {});
  const code = await child.exited;
  if (code !== 0) throw new Error(`reduce exited ${code}:\n${child.output().slice(-2000)}`);
  const line = child.output().slice(child.output().lastIndexOf('{"seconds"'));
  const out = z.object({ seconds: z.number(), cpuSeconds: z.number() }).parse(JSON.parse(line.split('\n')[0] ?? ''));
  return { sets, seedSeconds: seeded.seconds, seconds: out.seconds, rowsPerSecond: sets / out.seconds, peakRssBytes: child.peakRssBytes(), cpuSeconds: out.cpuSeconds };
}

// ---------------------------------------------------------------------------------------------
// (v) CellProfiler batching

interface CellProfilerResult {
  skipped?: string;
  version?: string;
  singles?: { sets: number; seconds: number; perSet: number };
  batch8?: { sets: number; seconds: number; perSet: number };
}


const EH_CHANNELS = ['DNA', 'PH3', 'cellbody'];

async function cellProfilerBatching(o: BenchOptions): Promise<CellProfilerResult> {
  const exe = process.env.CPFLOW_CELLPROFILER;
  if (!exe || !fs.existsSync(exe)) return { skipped: 'skipped: CellProfiler not installed' };
  const pipeline = path.join(EXAMPLE_HUMAN, 'ExampleHuman.cppipe');
  if (!fs.existsSync(pipeline)) return { skipped: `skipped: ${pipeline} missing` };
  const work = scratchDir('cellprofiler');
  try {
    // Eight copies of the ExampleHuman set (symlinks), each under its own well name and folder.
    const wells = ['D03', 'D04', 'D05', 'D06', 'D07', 'D08', 'D09', 'D10'];
    const sets: EngineImageSet[] = wells.map((well) => {
      const dir = path.join(work, 'in', well);
      fs.mkdirSync(dir, { recursive: true });
      const files = EH_CHANNELS.map((channel, c) => {
        const target = path.join(dir, `AS_09125_050116030001_${well}f00d${c}.tif`);
        fs.symlinkSync(path.join(EXAMPLE_HUMAN, 'images', `AS_09125_050116030001_D03f00d${c}.tif`), target);
        return { channel, path: target };
      });
      return { key: `EH-${well}`, metadata: { Well: well }, files };
    });
    const engine = createCellProfilerEngine({ executable: exe });
    log('(v) CellProfiler: probing the version (warms the Python import cache) …');
    const { version } = await engine.identity();
    const timed = async (batch: EngineImageSet[], name: string): Promise<number> => {
      const t0 = Date.now();
      const r = await engine.run({ imageSets: batch, pipelinePath: pipeline, outDir: path.join(work, `out-${name}`), tmpDir: path.join(work, `tmp-${name}`) });
      if (r.sets.length !== batch.length) throw new Error(`CellProfiler returned ${r.sets.length} of ${batch.length} sets`);
      return (Date.now() - t0) / 1000;
    };
    let singleSeconds = 0;
    const singles = sets.slice(0, o.cpSingles);
    for (const [i, s] of singles.entries()) {
      const t = await timed([s], `b1-${i}`);
      log(`  B=1 set ${i + 1}/${singles.length}: ${secs(t)}`);
      singleSeconds += t;
    }
    const batchSeconds = await timed(sets, 'b8');
    log(`  B=8: ${secs(batchSeconds)} for ${sets.length} sets`);
    return {
      version,
      singles: { sets: singles.length, seconds: singleSeconds, perSet: singleSeconds / singles.length },
      batch8: { sets: sets.length, seconds: batchSeconds, perSet: batchSeconds / sets.length },
    };
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// Report

function rssRows(section: string, pools: PoolReport[]): Row[] {
  return pools.map((p) => {
    const goal = p.pool === 'reduce' ? GOALS.reduceRssBytes : GOALS.workerRssBytes;
    return {
      section,
      metric: `peak RSS, ${p.pool} worker`,
      value: mib(p.peakRssBytes),
      goal: `< ${mib(goal)}`,
      met: p.peakRssBytes === undefined ? undefined : p.peakRssBytes < goal,
    };
  });
}

const topCpu = (cpu: Array<{ name: string; cpuSeconds: number }>, wall: number): string =>
  cpu
    .slice(0, 5)
    .map((c) => `${c.name} ${c.cpuSeconds} s (${((100 * c.cpuSeconds) / wall).toFixed(0)}% of one core)`)
    .join(', ');

function printTable(rows: Row[]): void {
  const widths = [4, 44, 26, 12];
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ').trimEnd();
  console.log(line(['', 'metric', 'value', 'goal']) + '  met');
  console.log('-'.repeat(widths.reduce((a, b) => a + b + 2, 0) + 3));
  for (const r of rows) console.log(line([r.section, r.metric, r.value, r.goal]) + `  ${r.met === undefined ? '' : r.met ? 'yes' : 'NO'}`);
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv);
  const only = new Set<Section>(o.only);
  WorkerSet.profileDir = o.profileWorkers ? path.resolve(o.profileWorkers) : undefined;
  WorkerSet.logDir = path.join(o.out, 'logs');
  // Everything on this host shares its cores: the load average says how contended a run was.
  const loads: number[] = [];
  const loadSampler = setInterval(() => loads.push(os.loadavg()[0] ?? 0), 5_000);
  const started = Date.now();
  fs.mkdirSync(o.out, { recursive: true });
  const sharedCellProfiler = path.join(cacheDir(), 'cellprofiler-venv', 'bin', 'cellprofiler');
  if (o.privateStack) {
    const shared = cacheDir();
    const own = `${shared.replace(/\/+$/, '')}-bench`;
    preparePrivateStack(shared, own);
    process.env.CPFLOW_CACHE_DIR = own;
  }
  const unlock = lockStack(cacheDir());
  process.once('exit', unlock);
  log(`bringing the local stack up (${cacheDir()}) …`);
  const stack = await ensureStackUp({ quiet: true });
  // Workers load the pre-built workflow bundle and refuse a stale one.
  await ensureWorkflowBundle(log);
  // The stack we just ensured is the one we measure, whatever the calling shell had set.
  for (const [k, v] of Object.entries(stack)) if (typeof v === 'string' && !(k === 'CPFLOW_CELLPROFILER' && process.env[k])) process.env[k] = v;
  if (!process.env.CPFLOW_CELLPROFILER && fs.existsSync(sharedCellProfiler)) process.env.CPFLOW_CELLPROFILER = sharedCellProfiler;
  // Our own database and namespace (inherited by every process we start): see isolation.ts.
  await ensureBenchDatabase(stack);
  await ensureBenchNamespace(stack);
  process.env.CPFLOW_DB_NAME = BENCH_DATABASE;
  process.env.CPFLOW_TEMPORAL_NAMESPACE = BENCH_NAMESPACE;
  const client = await connectClient();
  await terminateLeftovers(client, log);

  const results: Record<string, unknown> = {};
  const rows: Row[] = [];
  const notes: string[] = [];
  const file = path.join(o.out, `results-${stamp()}.json`);
  const loadSummary = (): { mean: number | undefined; max: number | undefined } => ({
    mean: loads.length ? Math.round((10 * loads.reduce((a, b) => a + b, 0)) / loads.length) / 10 : undefined,
    max: loads.length ? Math.max(...loads) : undefined,
  });
  // Written after every section, so a long run that is interrupted still leaves what it measured.
  const save = (state: 'running' | 'complete' | 'failed', error?: string): void => {
    const report = {
      kind: 'cpflow.bench/v1',
      state,
      error,
      startedAt: new Date(started).toISOString(),
      seconds: (Date.now() - started) / 1000,
      gitCommit: gitCommit(),
      host: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model, memoryBytes: os.totalmem(), node: process.version, loadAverage1m: loadSummary() },
      options: o,
      goals: GOALS,
      rows,
      notes,
      results,
    };
    fs.writeFileSync(file, JSON.stringify(report, null, 2));
  };
  const section = async (name: Section, work: () => Promise<void>): Promise<void> => {
    // Each section starts on a quiet machine: the services' clean-up after the previous one is not its cost.
    const quiet = await waitForQuiet();
    log(`(${name}) machine ${quiet.quiet ? 'quiet' : 'still busy'} after ${secs(quiet.waitedSeconds)} (${quiet.busyCores.toFixed(2)} cores busy)`);
    if (!quiet.quiet) notes.push(`(${name}) started on a busy machine: ${quiet.busyCores.toFixed(2)} cores busy after waiting ${secs(quiet.waitedSeconds)}`);
    await work();
    save('running');
    log(`  section ${name} done; results so far in ${file}`);
  };
  try {
    if (only.has('i')) await section('i', async () => {
      const r = await overhead(client, o);
      results.overhead = r;
      rows.push(
        { section: 'i', metric: `analyze-local, ${r.sets} sets ${r.imageSize}px, -j ${r.jobs}`, value: secs(r.localSeconds), goal: '', met: undefined },
        { section: 'i', metric: `cpflow start → reduce done, slots ${r.jobs}`, value: `${secs(r.cpflow.wallSeconds)} (reduce ${secs(r.cpflow.reduceSeconds)})`, goal: '', met: undefined },
        { section: 'i', metric: 'overhead ratio', value: r.ratio.toFixed(3), goal: `≤ ${GOALS.overheadRatio}`, met: r.ratio <= GOALS.overheadRatio },
        ...rssRows('i', r.pools),
      );
      notes.push(
        `(i) CPU-seconds of the whole machine: analyze-local ${r.machineCpuSeconds.local}, cpflow ${r.machineCpuSeconds.cpflow} (ratio ${(r.machineCpuSeconds.cpflow / r.machineCpuSeconds.local).toFixed(2)})`,
        `(i) CPU during the cpflow run (${secs(r.cpflow.wallSeconds)} wall, ${os.cpus().length} cores): ${topCpu(r.cpu, r.cpflow.wallSeconds)}`,
      );
    });
    if (only.has('ii')) await section('ii', async () => {
      const r = await noopRun(client, 'dispatch', o.dispatchSets, o.dispatchBatch, o);
      results.dispatch = r;
      rows.push(
        {
          section: 'ii',
          metric: `no-op, ${r.sets} sets end to end (submit → summary.csv), batch ${batchLabel(r)}, window ${r.timing.tuning.window}`,
          value: `${r.endToEndSetsPerSecond.toFixed(1)} sets/s`,
          goal: `≥ ${GOALS.setsPerSecond}`,
          met: r.endToEndSetsPerSecond >= GOALS.setsPerSecond,
        },
        { section: 'ii', metric: 'no-op analysis phase only (start → reduce scheduled)', value: `${r.setsPerSecond.toFixed(1)} sets/s`, goal: '', met: undefined },
        {
          section: 'ii',
          metric: `max history events (${r.timing.executions} executions)`,
          value: String(r.timing.maxHistoryLength),
          goal: `< ${GOALS.historyEvents}`,
          met: r.timing.maxHistoryLength < GOALS.historyEvents,
        },
      );
      const l = r.timing.chunkLatency;
      if (l) {
        notes.push(
          `(ii) first chunk: ${l.activities} activities, mean ${l.meanQueueMs} ms scheduled→started, ${l.meanRunMs} ms started→completed; ` +
            `${l.workflowTasks} workflow tasks, mean ${l.meanWorkflowTaskMs} ms scheduled→completed; ${l.historyLength} events`,
        );
      }
      notes.push(`(ii) CPU during the dispatch run (${secs(r.timing.wallSeconds)} wall): ${topCpu(r.cpu, r.timing.wallSeconds)}`);
    });
    if (only.has('iv') && !only.has('iii')) await section('iv', async () => {
      const r = await reduceOnly(o.scale);
      results.reduceOnly = r;
      rows.push(
        {
          section: 'iv',
          metric: `reduce alone, ${r.sets.toLocaleString('en')} seeded sets`,
          value: `${secs(r.seconds)}, ${r.rowsPerSecond.toFixed(0)} rows/s`,
          goal: `≥ ${GOALS.reduceRowsPerSecond}`,
          met: r.rowsPerSecond >= GOALS.reduceRowsPerSecond,
        },
        { section: 'iv', metric: 'peak RSS, reduce process', value: mib(r.peakRssBytes), goal: `< ${mib(GOALS.reduceRssBytes)}`, met: r.peakRssBytes === undefined ? undefined : r.peakRssBytes < GOALS.reduceRssBytes },
      );
      notes.push(`(iv) seeding ${r.sets.toLocaleString('en')} analysed sets took ${secs(r.seedSeconds)}; the reduce used ${r.cpuSeconds.toFixed(1)} CPU-s (${((1000 * r.cpuSeconds) / r.sets).toFixed(2)} ms per set)`);
    });
    if (only.has('iii')) await section('iii', async () => {
      const r = await noopRun(client, 'scale', o.scale, o.scaleBatch, o);
      results.scale = r;
      const t = r.timing;
      if (only.has('iii')) {
        rows.push(
          { section: 'iii', metric: `scale run, ${r.sets.toLocaleString('en')} sets, batch ${batchLabel(r)} (${t.status})`, value: secs(t.wallSeconds), goal: '', met: undefined },
          { section: 'iii', metric: 'analysis phase throughput', value: `${r.setsPerSecond.toFixed(1)} sets/s`, goal: `≥ ${GOALS.setsPerSecond}`, met: r.setsPerSecond >= GOALS.setsPerSecond },
          {
            section: 'iii',
            metric: `max history events (${t.executions} executions, ${t.parentRuns} parent runs)`,
            value: String(t.maxHistoryLength),
            goal: `< ${GOALS.historyEvents}`,
            met: t.maxHistoryLength < GOALS.historyEvents,
          },
          ...rssRows('iii', r.pools.filter((p) => p.pool !== 'reduce')),
        );
        notes.push(`(iii) largest history: ${t.maxHistoryExecution}; registering took ${secs(r.registerSeconds)}`);
        notes.push(`(iii) CPU during the scale run (${secs(t.wallSeconds)} wall): ${topCpu(r.cpu, t.wallSeconds)}`);
      }
      if (only.has('iv')) {
        rows.push(
          {
            section: 'iv',
            metric: `reduce, ${r.sets.toLocaleString('en')} sets`,
            value: `${secs(t.reduceSeconds)}, ${r.reduceRowsPerSecond.toFixed(0)} rows/s`,
            goal: `≥ ${GOALS.reduceRowsPerSecond}`,
            met: r.reduceRowsPerSecond >= GOALS.reduceRowsPerSecond,
          },
          ...rssRows('iv', r.pools.filter((p) => p.pool === 'reduce')),
        );
      }
    });
    if (only.has('v')) await section('v', async () => {
      const r = await cellProfilerBatching(o);
      results.cellprofiler = r;
      if (r.skipped) rows.push({ section: 'v', metric: 'CellProfiler batching', value: r.skipped, goal: '', met: undefined });
      else {
        rows.push(
          { section: 'v', metric: `CellProfiler ${r.version}, ExampleHuman, B=1 (${r.singles?.sets} runs)`, value: `${r.singles?.perSet.toFixed(1)} s/set`, goal: '', met: undefined },
          { section: 'v', metric: `CellProfiler, B=8 (one invocation)`, value: `${r.batch8?.perSet.toFixed(1)} s/set`, goal: '', met: undefined },
        );
      }
    });
    if (only.has('vi')) await section('vi', async () => {
      const r = await cellProfilerOverhead(client, { sets: o.cpSets, processes: o.jobs }, log);
      results.cellProfilerOverhead = r;
      if (r.skipped) rows.push({ section: 'vi', metric: 'CellProfiler overhead ratio', value: r.skipped, goal: '', met: undefined });
      else {
        rows.push(
          { section: 'vi', metric: `CellProfiler directly, ${r.sets} ExampleHuman sets, ${r.processes} processes`, value: secs(r.directSeconds ?? 0), goal: '', met: undefined },
          { section: 'vi', metric: `cpflow, same sets, ${r.processes} slots (submit → summary.csv)`, value: secs(r.cpflow?.endToEndSeconds ?? 0), goal: '', met: undefined },
          { section: 'vi', metric: 'CellProfiler overhead ratio', value: (r.ratio ?? 0).toFixed(2), goal: `≤ ${GOALS.cellProfilerOverheadRatio}`, met: (r.ratio ?? Infinity) <= GOALS.cellProfilerOverheadRatio },
        );
      }
    });
    if (only.has('vii')) await section('vii', async () => {
      const r = await sideBySide(
        client,
        {
          sets: o.sideSets,
          runs: o.sideRuns,
          noopSlots: o.noopSlots,
          window: o.window,
          peerWorkers: o.peerWorkers,
          peerConcurrency: o.peerConcurrency,
          peerPool: o.peerPool,
          drillSets: o.drillSets,
          cacheDir: cacheDir(),
          scratch: scratchDir('side'),
        },
        log,
      );
      results.sideBySide = r;
      for (const run of r.runs) {
        rows.push({
          section: 'vii',
          metric: `${run.side === 'cpflow' ? 'cpflow no-op' : 'Celery peer '} run ${run.run}, ${run.sets} sets (${run.done} done)`,
          value: `${secs(run.seconds)}, ${run.setsPerSecond.toFixed(1)} sets/s`,
          goal: '',
          met: undefined,
        });
      }
      const cpflowCpu = r.cpuPerSet.cpflow.total ?? 0;
      const peerCpu = r.cpuPerSet.peer.total ?? 0;
      rows.push(
        { section: 'vii', metric: 'median, cpflow no-op (start → summary.csv)', value: `${r.medianCpflow.toFixed(1)} sets/s`, goal: `≥ ${GOALS.setsPerSecond}`, met: r.medianCpflow >= GOALS.setsPerSecond },
        { section: 'vii', metric: 'median, Celery + RabbitMQ peer', value: `${r.medianPeer.toFixed(1)} sets/s`, goal: '', met: undefined },
        { section: 'vii', metric: 'ratio cpflow / peer', value: r.ratio.toFixed(2), goal: `≥ ${GOALS.peerRatio}`, met: r.ratio >= GOALS.peerRatio },
        { section: 'vii', metric: 'CPU-s per set, cpflow (workers + Temporal + MinIO + MariaDB)', value: (cpflowCpu).toFixed(4), goal: `≤ peer`, met: cpflowCpu <= peerCpu },
        { section: 'vii', metric: 'CPU-s per set, peer (workers + RabbitMQ + MinIO + MariaDB)', value: (peerCpu).toFixed(4), goal: '', met: undefined },
        { section: 'vii', metric: 'same summary.csv from both', value: r.summariesIdentical ? 'yes' : 'NO', goal: 'yes', met: r.summariesIdentical },
        ...r.drills.map((d) => ({
          section: 'vii',
          metric: `kill -9 drill, ${d.side}, ${d.sets} sets (killed at ${d.killedAtDone})`,
          value: `lost ${d.lost}, twice ${d.duplicated}${d.finished ? '' : ', hung'}`,
          goal: 'lost 0',
          met: d.lost === 0,
        })),
      );
      const fmt = (m: Record<string, number>) => Object.entries(m).filter(([k]) => k !== 'total').map(([k, v]) => `${k} ${v.toFixed(4)}`).join(', ');
      notes.push(`(vii) CPU-s per set by process (median of runs): cpflow: ${fmt(r.cpuPerSet.cpflow)}; peer: ${fmt(r.cpuPerSet.peer)}`);
      for (const d of r.drills) notes.push(`(vii) drill ${d.side}: ${d.note}, ${secs(d.seconds)}`);
    });
    if (only.has('viii')) await section('viii', async () => {
      const r = await profilesBench(o.profilesSets, log);
      results.profiles = r;
      if ('skipped' in r) rows.push({ section: 'viii', metric: 'profiles step', value: r.skipped, goal: '', met: undefined });
      else {
        const peak = Math.max(r.gatherPeakRssBytes, r.pythonPeakRssBytes);
        rows.push(
          { section: 'viii', metric: `profiles, ${r.sets.toLocaleString('en')} sets, ${r.cells.toLocaleString('en')} cells, ${r.wells.toLocaleString('en')} wells`, value: `${secs(r.gatherSeconds)} gather + ${secs(r.pythonSeconds)} CytoTable/pycytominer`, goal: '', met: undefined },
          { section: 'viii', metric: 'profiles peak RSS (Node gather / Python)', value: `${mib(r.gatherPeakRssBytes)} / ${mib(r.pythonPeakRssBytes)}`, goal: `< ${mib(GOALS.profilesRssBytes)}`, met: peak < GOALS.profilesRssBytes },
        );
      }
    });
  } catch (err) {
    save('failed', err instanceof Error ? err.message : String(err));
    throw err;
  } finally {
    await client.connection.close();
    await closeDb();
  }

  clearInterval(loadSampler);
  const load = loadSummary();
  save('complete');
  console.log(
    `\ncpflow bench — ${new Date(started).toISOString()}, ${os.cpus().length} cores, load average (1 min) mean ${load.mean ?? '?'} / max ${load.max?.toFixed(1) ?? '?'}, ` +
      `commit ${gitCommit() ?? '?'}${o.privateStack ? ', private stack' : ''}`,
  );
  printTable(rows);
  if (notes.length) console.log(`\n${notes.join('\n')}`);
  console.log(`\nresults: ${file} (${secs((Date.now() - started) / 1000)} in all)`);
  if (!o.keepData) await removeBenchObjects();
}

/**
 * Every object in the bench project's bucket, this run's and any an interrupted run left: the figures
 * are printed and saved by now, and a full run would otherwise leave about 7 GB behind (several in a
 * day filled this machine's disk). The bench database keeps its rows, so ids never repeat.
 */
async function removeBenchObjects(): Promise<void> {
  const bucket = bucketForProject(BENCH_PROJECT);
  log(`removing the objects of bucket ${bucket} (--keep-data keeps them) …`);
  const t0 = Date.now();
  const removed = await deletePrefix(bucket, '');
  log(`  removed ${removed.toLocaleString('en')} objects in ${secs((Date.now() - t0) / 1000)}`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
