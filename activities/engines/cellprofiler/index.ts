/**
 * The `cellprofiler` engine: runs the real CellProfiler 5 CLI headless on one or more image sets and
 * splits ExportToSpreadsheet's tables into one folder per image set.
 *
 * One invocation:
 *   cellprofiler -c -r -p <pipeline> --file-list <list> -o <out> -t <tmp> -d <done> -e imageio_reader
 *
 * - `-e imageio_reader` enables only the imageio reader. Without it CellProfiler 5 also enables the
 *   Bio-Formats reader, which starts a JVM through scyjava/jgo and fetches `ome:formats-gpl` from
 *   maven.scijava.org at first use; that host is unreachable here, so the run fails in NamesAndTypes
 *   (verified with 5.0.0.dev784). imageio reads the plain TIFF/PNG files cpflow handles.
 * - Success is only a done file that says `Complete` (CellProfiler writes `Failure` otherwise, and
 *   exits 255). `--always-continue` is not used: with a broken image in the batch this build crashes
 *   with no done file at all instead of skipping the set.
 * - Every attempt gets fresh directories under the caller's tmpDir, so a retry never meets the
 *   outputs of the previous one (ExportToSpreadsheet may refuse to overwrite).
 * - CellProfiler runs in its own process group (detached) so that cancellation and timeouts kill it
 *   and every child it started with one `kill(-pid)`.
 *
 * LoadData pipelines: instead of a file list, CellProfiler gets a LoadData CSV of exactly this
 * invocation's sets (`--data-file`, load-data.ts), one row per set, pointing at the same per-set folders.
 *
 * Groups (`EngineRunInput.grouping`): the sets of one group run in one invocation in the order given,
 * so CellProfiler's "All" illumination functions, tracking and other pooling modules see the whole
 * group. Outputs no single set's row names (an illumination function saved once, at the last cycle)
 * are the group's, returned as `shared`.
 *
 * Warm (the default, CPFLOW_CELLPROFILER_WARM): the same arguments go to a long-lived CellProfiler of
 * this worker (warm.ts) instead of a new CLI process, which saves CellProfiler's start-up per
 * invocation; everything else here (inputs, done file, classification, splitting) is shared. Without
 * the venv's python beside the executable (a wrapper script), the CLI runs.
 *
 * Plugins: `pluginsDir` is passed as `--plugins-directory`; the identity lists every plugin file with
 * its sha256, so results are redone when a plugin changes.
 *
 * Batching: the files of all sets go into one file list. Each set's files are symlinked into their
 * own folder `<attempt>/input/sNNNNN/<original file name>` first. The original file names are kept
 * because NamesAndTypes assigns channels by file-name rules (ExampleHuman: `file does contain
 * "d0.tif"`); the per-set folder is what maps CellProfiler's ImageNumber back to our set afterwards:
 * the PathName_<channel> columns of Image.csv name the folder each image set's files came from. That
 * mapping is read from the output, never assumed from the order of the file list.
 *
 * Per-set outputs (`<outDir>/<setKey>/`):
 * - Every table with an `ImageNumber` column (Image.csv, Nuclei.csv, …) keeps only that set's rows,
 *   with ImageNumber set to the number cpflow gives the set (`EngineImageSet.imageNumber`: the image
 *   set's id, unique within the experiment), so the folders of one experiment concatenate without
 *   collisions (CytoTable's cellprofiler_csv preset joins on ImageNumber alone). Without a number
 *   (analyze-local) a set's rows are numbered from 1, as a CellProfiler run on that set alone would.
 *   Group_Number/Group_Index are left as CellProfiler wrote them.
 * - Relationship tables (`First Image Number`/`Second Image Number`) are split by the first image.
 * - Tables without image numbers (Experiment.csv) are copied into every set.
 * - Other files (SaveImages output) go to the set whose Image.csv row names them in a
 *   FileName_X/PathName_X pair; with one set per invocation every file belongs to it. Files that no
 *   row or several rows name go to `shared` (the group's outputs; in a batch the caller reruns the
 *   sets one by one, so nothing is dropped).
 * - Path columns of the Image table (PathName_X, URL_X, Metadata_FileLocation) name the files' durable
 *   locations (`sourceUri`, the sets' and group's `outputUri`) instead of this attempt's scratch folders.
 * - ExportToSpreadsheet's optional file-name prefix is removed (`MyExpt_Image.csv` → `Image.csv`).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { pluginFiles, probeCellProfilerVersion, pythonBeside } from '../../../core/cellprofiler';
import { workerConfig } from '../../../core/config';
import { DEFAULTS } from '../../../core/model';
import { parseCppipe, PipelineError, type Pipeline } from '../../../core/pipeline/cppipe';
import { validatePipelineForCpflow } from '../../../core/pipeline/validate';
import { ImageSetInputError, SHARED_OUTPUTS_DIR, type Engine, type EngineIdentity, type EngineImageSet, type EngineRunInput, type EngineRunResult } from '../types';
import { cellProfilerEnvironment } from './environment';
import { classifyFailure, invoke, pipelineLoadFailure } from './invoke';
import { invokeWarm, WarmPool } from './warm';
import { writeLoadDataCsv } from './load-data';
import { setFolderName, splitOutputs, type AttemptPaths } from './split-outputs';

export interface CellProfilerEngineOptions {
  /** Path of the `cellprofiler` executable (e.g. `<cache>/cellprofiler-venv/bin/cellprofiler`). */
  executable: string;
  /** Readers passed to `-e`; defaults to `['imageio_reader']` (no JVM, see above). */
  readers?: string[];
  /** CellProfiler plugins directory (CPFLOW_CELLPROFILER_PLUGINS). */
  pluginsDir?: string;
  /**
   * Warm processes instead of the CLI: true for this worker's shared pool, a pool of the caller's own
   * (tests), false for the CLI. Default: CPFLOW_CELLPROFILER_WARM.
   */
  warm?: boolean | WarmPool;
}

/** Warm pools of this process, one per (python, plugins directory), one process per engine slot. */
const sharedPools = new Map<string, WarmPool>();
let warmCapacity: number | undefined;

/** Warm CellProfilers kept per pool (default CPFLOW_ANALYZE_SLOTS; analyze-local sets its job count). */
export function setCellProfilerWarmProcesses(count: number): void {
  if (!Number.isInteger(count) || count < 1) throw new RangeError(`warm CellProfiler processes must be a positive integer, got ${count}`);
  warmCapacity = count;
  for (const pool of sharedPools.values()) pool.capacity = count;
}

/** The pool a run uses, or undefined for the CLI. */
function warmPoolFor(opts: CellProfilerEngineOptions): WarmPool | undefined {
  if (opts.warm instanceof WarmPool) return opts.warm;
  const config = workerConfig();
  if (!(opts.warm ?? config.CPFLOW_CELLPROFILER_WARM)) return undefined;
  const python = pythonBeside(opts.executable);
  if (!python) return undefined;
  const key = JSON.stringify([python, opts.pluginsDir ?? '']);
  let pool = sharedPools.get(key);
  if (!pool) {
    pool = new WarmPool(
      { python, pluginsDir: opts.pluginsDir, maxRssBytes: config.CPFLOW_CELLPROFILER_WARM_MAX_RSS_MIB * 1024 * 1024 },
      warmCapacity ?? config.CPFLOW_ANALYZE_SLOTS,
    );
    sharedPools.set(key, pool);
  }
  return pool;
}

/** Identity probes of this process, by executable: each costs a CellProfiler start (a second or two). */
const probes = new Map<string, Promise<EngineIdentity>>();

/**
 * CellProfiler's version and environment (Python, package set), which go into provenance and the
 * skip-if-done check; probed once per executable and process. The worker calls it when it starts
 * (prepareEngines), so the first image set does not wait for it. A failed probe (e.g. a venv being
 * installed) is not kept: the next call tries again.
 */
export function probeCellProfilerIdentity(executable: string): Promise<EngineIdentity> {
  let probe = probes.get(executable);
  if (!probe) {
    probe = probeCellProfilerVersion(executable).then(async (version) => ({
      name: 'cellprofiler' as const,
      version,
      environment: await cellProfilerEnvironment(executable, version),
    }));
    probes.set(executable, probe);
    probe.catch(() => probes.delete(executable));
  }
  return probe;
}

/**
 * Starts this worker's warm CellProfilers before any request (one per engine slot) and resolves with
 * how many are ready; 0 when warm processes are off or cannot be used (no venv python beside it).
 */
export async function prestartWarmCellProfilers(opts: CellProfilerEngineOptions): Promise<number> {
  const pool = warmPoolFor(opts);
  return pool ? pool.prestart() : 0;
}

export function createCellProfilerEngine(opts: CellProfilerEngineOptions): Engine {
  const identity = async (): Promise<EngineIdentity> => {
    const base = await probeCellProfilerIdentity(opts.executable);
    // Hashed on every call (a few small files): a plugin edited on a running worker is noticed.
    return opts.pluginsDir ? { ...base, plugins: await pluginFiles(opts.pluginsDir) } : base;
  };
  return {
    identity,
    run: async (input) => {
      const engine = await identity();
      return runCellProfiler(opts, engine, input);
    },
  };
}

async function runCellProfiler(
  opts: CellProfilerEngineOptions,
  engine: EngineIdentity,
  input: EngineRunInput,
): Promise<EngineRunResult> {
  const { imageSets } = input;
  if (imageSets.length === 0) throw new Error('cellprofiler engine: no image sets to run');
  if (!input.pipelinePath) throw new Error('cellprofiler engine: a pipeline file is required');
  assertUsableKeys(imageSets);
  const singleKey = imageSets.length === 1 ? imageSets[0].key : undefined;

  let pipeline: Pipeline;
  let loadData: boolean;
  const pipelineText = await fs.promises.readFile(input.pipelinePath, 'utf8');
  try {
    pipeline = parseCppipe(pipelineText, path.basename(input.pipelinePath));
    loadData = validatePipelineForCpflow(pipeline).input === 'loaddata';
  } catch (err) {
    // The pipeline is the same for every attempt: unreadable is final, not transient.
    if (err instanceof PipelineError) throw new ImageSetInputError(err.message, singleKey);
    throw err;
  }

  await fs.promises.mkdir(input.tmpDir, { recursive: true });
  const root = await fs.promises.mkdtemp(path.join(input.tmpDir, 'cellprofiler-'));
  const paths: AttemptPaths = {
    root,
    inputDir: path.join(root, 'input'),
    fileList: path.join(root, 'files.txt'),
    outDir: path.join(root, 'out'),
    tmpDir: path.join(root, 'tmp'),
    doneFile: path.join(root, 'done.txt'),
  };
  await Promise.all([paths.inputDir, paths.outDir, paths.tmpDir].map((d) => fs.promises.mkdir(d, { recursive: true })));
  const linked = await linkInputs(imageSets, paths.inputDir);
  const inputArgs: string[] = [];
  if (loadData) {
    const dataFile = path.join(root, 'load_data.csv');
    await writeLoadDataCsv(dataFile, imageSets, linked);
    inputArgs.push('--data-file', dataFile);
  } else {
    await fs.promises.writeFile(paths.fileList, `${linked.flatMap((m) => [...m.values()]).join('\n')}\n`);
    inputArgs.push('--file-list', paths.fileList);
  }

  const args = [
    '-c',
    '-r',
    '-p',
    input.pipelinePath,
    ...inputArgs,
    '-o',
    paths.outDir,
    '-t',
    paths.tmpDir,
    '-d',
    paths.doneFile,
    ...(opts.pluginsDir ? ['--plugins-directory', opts.pluginsDir] : []),
    '-e',
    ...(opts.readers ?? ['imageio_reader']),
  ];
  const timeoutMs = input.timeoutMs ?? DEFAULTS.ENGINE_TIMEOUT_SECONDS * 1000;
  const pool = warmPoolFor(opts);
  // A warm process serves one pipeline with one set of plugin files (by content).
  const warmKey = crypto.createHash('sha256').update(pipelineText).update(JSON.stringify(engine.plugins ?? [])).digest('hex');
  const run = pool
    ? await invokeWarm(pool, warmKey, input.pipelinePath, args, imageSets.length, timeoutMs, input)
    : await invoke(opts.executable, args, imageSets.length, timeoutMs, input);

  const done = await fs.promises.readFile(paths.doneFile, 'utf8').catch(() => undefined);
  // Checked before the done file: this build says `Complete` after running only the modules it loaded.
  const loadFailure = pipelineLoadFailure(run, imageSets);
  if (loadFailure) throw loadFailure;
  if (done?.trim() !== 'Complete') {
    throw classifyFailure(run, done, imageSets);
  }

  input.onProgress?.('splitting CellProfiler outputs per image set');
  const split = await splitOutputs(pipeline, paths, imageSets, input.outDir, input.grouping);
  return { engine, sets: split.sets, shared: split.shared, warnings: run.warnings };
}

function assertUsableKeys(sets: EngineImageSet[]): void {
  const seen = new Set<string>();
  for (const set of sets) {
    // Keys become folder names under outDir.
    if (set.key === '' || set.key === '.' || set.key === '..' || set.key === SHARED_OUTPUTS_DIR || /[/\\\0]/.test(set.key)) {
      throw new Error(`cellprofiler engine: image set key ${JSON.stringify(set.key)} cannot be a folder name`);
    }
    if (seen.has(set.key)) throw new Error(`cellprofiler engine: image set key ${set.key} appears twice in one batch`);
    seen.add(set.key);
  }
}

/**
 * Symlinks each set's files into its own folder, keeping file names; returns, per set, its
 * channels' links (the file list is every link, in set order).
 */
async function linkInputs(sets: EngineImageSet[], inputDir: string): Promise<Array<Map<string, string>>> {
  const linked: Array<Map<string, string>> = [];
  for (const [index, set] of sets.entries()) {
    const dir = path.join(inputDir, setFolderName(index));
    await fs.promises.mkdir(dir);
    const names = new Set<string>();
    const links = new Map<string, string>();
    for (const file of set.files) {
      const stat = await fs.promises.stat(file.path).catch(() => undefined);
      if (!stat?.isFile()) {
        throw new ImageSetInputError(`image set ${set.key}: image for channel ${file.channel} is missing: ${file.path}`, set.key);
      }
      if (stat.size === 0) {
        throw new ImageSetInputError(`image set ${set.key}: image for channel ${file.channel} is empty: ${file.path}`, set.key);
      }
      const name = path.basename(file.path);
      if (names.has(name) || /[\r\n]/.test(name)) {
        throw new ImageSetInputError(
          `image set ${set.key}: file name ${JSON.stringify(name)} is used twice or unusable in a CellProfiler file list`,
          set.key,
        );
      }
      names.add(name);
      const link = path.join(dir, name);
      await fs.promises.symlink(path.resolve(file.path), link);
      links.set(file.channel, link);
    }
    linked.push(links);
  }
  return linked;
}
