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
 * Batching: the files of all sets go into one file list. Each set's files are symlinked into their
 * own folder `<attempt>/input/sNNNNN/<original file name>` first. The original file names are kept
 * because NamesAndTypes assigns channels by file-name rules (ExampleHuman: `file does contain
 * "d0.tif"`); the per-set folder is what maps CellProfiler's ImageNumber back to our set afterwards:
 * the PathName_<channel> columns of Image.csv name the folder each image set's files came from. That
 * mapping is read from the output, never assumed from the order of the file list.
 *
 * Per-set outputs (`<outDir>/<setKey>/`):
 * - Every table with an `ImageNumber` column (Image.csv, Nuclei.csv, …) keeps only that set's rows,
 *   with ImageNumber renumbered from 1 in the set's own order, so each folder reads exactly like a
 *   CellProfiler run on that set alone (CytoTable/pycytominer join on ImageNumber within a folder).
 *   The batch-wide number is not kept: batch composition is an accident of scheduling, and the
 *   set's identity lives in its folder name, its FileName_/PathName_ columns and provenance.json.
 *   Group_Number/Group_Index are left as CellProfiler wrote them.
 * - Relationship tables (`First Image Number`/`Second Image Number`) are split by the first image.
 * - Tables without image numbers (Experiment.csv) are copied into every set.
 * - Other files (SaveImages output) go to the set whose Image.csv row names them in a
 *   FileName_X/PathName_X pair; with one set per invocation every file belongs to it. Files that no
 *   row or several rows name are left out in a batch (they cannot be attributed safely).
 * - ExportToSpreadsheet's optional file-name prefix is removed (`MyExpt_Image.csv` → `Image.csv`).
 */
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { finished } from 'node:stream/promises';
import { parse } from 'csv-parse';
import { stringify, type Stringifier } from 'csv-stringify';
import execa from 'execa';
import { parseCppipe, PipelineError, settingValue, spreadsheetFilePrefix, type Pipeline } from '../pipeline/cppipe';
import { cellProfilerEnvironment } from './cellprofiler-environment';
import {
  ImageSetInputError,
  PipelineRunError,
  type Engine,
  type EngineIdentity,
  type EngineImageSet,
  type EngineRunInput,
  type EngineRunResult,
  type EngineSetResult,
} from './types';

export interface CellProfilerEngineOptions {
  /** Path of the `cellprofiler` executable (e.g. `<cache>/cellprofiler-venv/bin/cellprofiler`). */
  executable: string;
  /** Default limit for one invocation; `EngineRunInput.timeoutMs` overrides it. */
  timeoutMs?: number;
  /** Readers passed to `-e`; defaults to `['imageio_reader']` (no JVM, see above). */
  readers?: string[];
}

/** Default: 30 minutes per invocation, generous for a batch of large images on a small worker. */
const DEFAULT_TIMEOUT_MS = 30 * 60 * 1000;
const STDERR_TAIL_LINES = 40;
const VERSION_PATTERN = /^\d+\.\d+\.\d+[0-9A-Za-z.+-]*$/;
/** Modules that load images; an error there means the image itself could not be read. */
const IMAGE_LOADING_MODULES = new Set(['Images', 'Metadata', 'NamesAndTypes', 'Groups', 'LoadData', 'LoadImages']);

export function createCellProfilerEngine(opts: CellProfilerEngineOptions): Engine {
  let identityPromise: Promise<EngineIdentity> | undefined;
  const identity = (): Promise<EngineIdentity> => {
    // The environment (Python, package set) goes into provenance and the skip-if-done check.
    identityPromise ??= probeVersion(opts.executable).then(async (version) => ({
      name: 'cellprofiler',
      version,
      environment: await cellProfilerEnvironment(opts.executable, version),
    }));
    // A failed probe (e.g. a venv being installed) is not cached: the next call tries again.
    identityPromise.catch(() => {
      identityPromise = undefined;
    });
    return identityPromise;
  };
  return {
    identity,
    run: async (input) => {
      const engine = await identity();
      return runCellProfiler(opts, engine, input);
    },
  };
}

/** Exact `cellprofiler --version` output, e.g. `5.0.0.dev784`. */
export async function probeVersion(executable: string): Promise<string> {
  const result = await execa(executable, ['--version'], {
    reject: false,
    timeout: 180_000,
    env: headlessEnv(),
    stdin: 'ignore',
  });
  const lines = result.stdout.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  const version = lines[lines.length - 1] ?? '';
  if (result.exitCode !== 0 || !VERSION_PATTERN.test(version)) {
    throw new Error(
      `\`${executable} --version\` failed (exit ${result.exitCode ?? 'none'}): ${result instanceof Error ? result.message : tail(`${result.stdout}\n${result.stderr}`, 10)}`,
    );
  }
  return version;
}

function headlessEnv(): NodeJS.ProcessEnv {
  // Agg: matplotlib must never look for a display on a worker.
  return { ...process.env, MPLBACKEND: 'Agg' };
}

interface AttemptPaths {
  root: string;
  inputDir: string;
  fileList: string;
  outDir: string;
  tmpDir: string;
  doneFile: string;
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
  try {
    pipeline = parseCppipe(await fs.promises.readFile(input.pipelinePath, 'utf8'), path.basename(input.pipelinePath));
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
  await fs.promises.writeFile(paths.fileList, `${linked.join('\n')}\n`);

  const args = [
    '-c',
    '-r',
    '-p',
    input.pipelinePath,
    '--file-list',
    paths.fileList,
    '-o',
    paths.outDir,
    '-t',
    paths.tmpDir,
    '-d',
    paths.doneFile,
    '-e',
    ...(opts.readers ?? ['imageio_reader']),
  ];
  const timeoutMs = input.timeoutMs ?? opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const run = await invoke(opts.executable, args, imageSets.length, timeoutMs, input);

  const done = await fs.promises.readFile(paths.doneFile, 'utf8').catch(() => undefined);
  if (done?.trim() !== 'Complete') {
    throw classifyFailure(run, done, imageSets);
  }

  input.onProgress?.('splitting CellProfiler outputs per image set');
  const sets = await splitOutputs(pipeline, paths, imageSets, input.outDir);
  return { engine, sets };
}

function assertUsableKeys(sets: EngineImageSet[]): void {
  const seen = new Set<string>();
  for (const set of sets) {
    // Keys become folder names under outDir.
    if (set.key === '' || set.key === '.' || set.key === '..' || /[/\\\0]/.test(set.key)) {
      throw new Error(`cellprofiler engine: image set key ${JSON.stringify(set.key)} cannot be a folder name`);
    }
    if (seen.has(set.key)) throw new Error(`cellprofiler engine: image set key ${set.key} appears twice in one batch`);
    seen.add(set.key);
  }
}

function setFolderName(index: number): string {
  return `s${String(index).padStart(5, '0')}`;
}

/** Symlinks each set's files into its own folder, keeping file names; returns the file list lines. */
async function linkInputs(sets: EngineImageSet[], inputDir: string): Promise<string[]> {
  const lines: string[] = [];
  for (const [index, set] of sets.entries()) {
    const dir = path.join(inputDir, setFolderName(index));
    await fs.promises.mkdir(dir);
    const names = new Set<string>();
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
      lines.push(link);
    }
  }
  return lines;
}

interface InvocationResult {
  exitCode: number | undefined;
  /** Set when the executable could not be started at all (e.g. ENOENT). */
  spawnError?: string;
  stderrTail: string[];
  /** Last `Image # N` CellProfiler reported before its first module error, if any. */
  errorImageNumber?: number;
  /** Module named in CellProfiler's "Error detected during run of module X". */
  errorModule?: string;
  /** Exception line (e.g. `IndexError: ...`) of the traceback that followed the module error. */
  errorException?: string;
  /** Signal that ended CellProfiler (OOM killer, …), if any. */
  signal?: string;
  /** Whether CellProfiler reported running any module on any image set. */
  ranAnImageSet: boolean;
  /** The last exception line of any traceback CellProfiler printed. */
  lastException?: string;
  /** CellProfiler said no image matched the pipeline's rules (NamesAndTypes made no image set). */
  noImageSets: boolean;
}

const MODULE_PROGRESS = /Image # (\d+), module (\S+) # (\d+)/;
const MODULE_ERROR = /Error detected during run of module (\w+)/;
const EXCEPTION_LINE = /^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)): ?(.*)$/;
/** CellProfiler's warning when NamesAndTypes' rules match none of the listed files. */
const NO_IMAGE_SETS = /No images passed group filters|no image sets|image set list is empty/i;
/** Failures that another attempt (later, or on another worker) may not meet again. */
const RESOURCE_EXHAUSTION = /MemoryError|Killed|No space left on device|Errno 28|Errno 12|Cannot allocate memory|Too many open files/;
/**
 * Exceptions that say the machine, not the run, was at fault (I/O error, no memory or disk, too many
 * files, a connection or timeout). A plain OSError is not among them: on a local, checksummed input it
 * is the decoder saying the file is not an image, which the next attempt meets again.
 */
const TRANSIENT_EXCEPTION =
  /^(BlockingIOError|ConnectionError|ConnectionResetError|ConnectionRefusedError|TimeoutError|BrokenPipeError|InterruptedError|KeyboardInterrupt)\b|\[Errno (5|11|12|24|28|110|111)\]/;

async function invoke(
  executable: string,
  args: string[],
  setCount: number,
  timeoutMs: number,
  input: EngineRunInput,
): Promise<InvocationResult> {
  if (input.signal?.aborted) throw abortError(input.signal);
  const child = execa(executable, args, {
    detached: true,
    reject: false,
    buffer: false,
    stdin: 'ignore',
    env: headlessEnv(),
  });
  const pid = child.pid;
  const killGroup = () => {
    if (pid === undefined) return;
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  };

  const result: InvocationResult = { exitCode: undefined, stderrTail: [], ranAnImageSet: false, noImageSets: false };
  let lastImageNumber: number | undefined;
  let awaitingException = false;
  const consume = (stream: NodeJS.ReadableStream | null) => {
    if (!stream) return Promise.resolve();
    const lines = readline.createInterface({ input: stream, crlfDelay: Infinity });
    lines.on('line', (line) => {
      // CellProfiler logs to stderr; stdout lines (rare) are kept too, in arrival order.
      result.stderrTail.push(line);
      if (result.stderrTail.length > STDERR_TAIL_LINES) result.stderrTail.shift();
      if (NO_IMAGE_SETS.test(line)) result.noImageSets = true;
      const anyException = EXCEPTION_LINE.exec(line.trim());
      if (anyException && !/^ModuleNotFoundError: No module named 'MySQLdb'/.test(line.trim())) {
        // (MySQLdb: CellProfiler logs its guarded, expected import failure at every start.)
        result.lastException = line.trim();
      }
      const progress = MODULE_PROGRESS.exec(line);
      if (progress) {
        result.ranAnImageSet = true;
        lastImageNumber = Number(progress[1]);
        input.onProgress?.(`CellProfiler image set ${progress[1]}/${setCount}: ${progress[2]} (module ${progress[3]})`);
        return;
      }
      const moduleError = MODULE_ERROR.exec(line);
      if (moduleError && result.errorModule === undefined) {
        result.errorModule = moduleError[1];
        result.errorImageNumber = lastImageNumber;
        awaitingException = true;
        return;
      }
      if (awaitingException) {
        const exception = EXCEPTION_LINE.exec(line);
        if (exception) {
          result.errorException = line;
          awaitingException = false;
        }
      }
    });
    return once(lines, 'close');
  };

  let stopReason: Error | undefined;
  const onAbort = () => {
    stopReason ??= abortError(input.signal);
    killGroup();
  };
  input.signal?.addEventListener('abort', onAbort, { once: true });
  const timer = setTimeout(() => {
    stopReason ??= new Error(`CellProfiler timed out after ${Math.round(timeoutMs / 1000)} s and was killed`);
    killGroup();
  }, timeoutMs);
  try {
    const [outcome] = await Promise.all([child, consume(child.stderr), consume(child.stdout)]);
    result.exitCode = outcome.exitCode;
    result.signal = outcome.signal ?? undefined;
    if (outcome.failed && outcome.exitCode === undefined && !outcome.isCanceled && outcome.signal === undefined) {
      // With reject:false execa resolves with its error object when the spawn itself failed.
      result.spawnError = outcome instanceof Error ? outcome.message : 'spawn failed';
    }
  } finally {
    clearTimeout(timer);
    input.signal?.removeEventListener('abort', onAbort);
    // CellProfiler may leave workers behind in its group; nothing of this attempt should outlive it.
    killGroup();
  }
  if (stopReason) throw stopReason;
  return result;
}

function abortError(signal: AbortSignal | undefined): Error {
  const reason: unknown = signal?.reason;
  if (reason instanceof Error) return reason;
  const err = new Error('CellProfiler run cancelled');
  err.name = 'AbortError';
  return err;
}

function classifyFailure(run: InvocationResult, done: string | undefined, sets: EngineImageSet[]): Error {
  const doneText = done === undefined ? 'no done file' : `done file says ${JSON.stringify(done.trim())}`;
  const detail = run.spawnError
    ? `CellProfiler could not be started: ${run.spawnError}`
    : `CellProfiler failed (exit ${run.exitCode ?? 'none'}${run.signal ? `, ${run.signal}` : ''}, ${doneText})`;
  const stderr = run.stderrTail.join('\n');
  const single = sets.length === 1 ? sets[0].key : undefined;
  // In a batch the failing set is not named: the caller reruns the sets one by one to find it.
  const which = (imageNo: number | undefined) =>
    single !== undefined
      ? `image set ${single}`
      : `image set #${imageNo ?? '?'} of a batch of ${sets.length} (${sets.map((s) => s.key).join(', ')})`;
  const retryable =
    run.spawnError !== undefined ||
    run.signal !== undefined ||
    RESOURCE_EXHAUSTION.test(`${run.errorException ?? ''}\n${run.lastException ?? ''}\n${stderr}`) ||
    TRANSIENT_EXCEPTION.test(run.errorException ?? run.lastException ?? '');
  if (!retryable && run.errorModule) {
    // A module that raises on an image set raises on every attempt (a file that does not decode, a
    // setting the data cannot satisfy, a library API the module needs): final, named, never retried.
    const loading = IMAGE_LOADING_MODULES.has(run.errorModule);
    const what = loading ? 'could not load an image' : `module ${run.errorModule} failed`;
    return new PipelineRunError(
      `${which(run.errorImageNumber)}: CellProfiler ${what}${run.errorException ? `: ${run.errorException}` : ''}\n${detail}; last lines of stderr:\n${stderr}`,
      single,
      run.errorModule,
      run.errorException,
    );
  }
  if (!retryable && run.noImageSets && !run.ranAnImageSet) {
    return new PipelineRunError(
      `${which(undefined)}: CellProfiler made no image set from the files ${sets.flatMap((s) => s.files.map((f) => path.basename(f.path))).join(', ')} ` +
        `(do the pipeline's NamesAndTypes rules match these file names?)\n${detail}; last lines of stderr:\n${stderr}`,
      single,
    );
  }
  if (!retryable && done !== undefined && run.lastException) {
    // CellProfiler finished its run and recorded a failure after an exception outside any module
    // (pipeline load, prepare_run, post_run): the same pipeline on the same files does it again.
    return new PipelineRunError(
      `${which(undefined)}: CellProfiler failed: ${run.lastException}\n${detail}; last lines of stderr:\n${stderr}`,
      single,
      undefined,
      run.lastException,
    );
  }
  return new Error(`${detail}; last lines of stderr:\n${stderr}`);
}

function tail(text: string, lines: number): string {
  return text.split('\n').filter((l) => l.trim() !== '').slice(-lines).join('\n');
}

// ---------------------------------------------------------------------------------------------
// Splitting outputs per image set

interface ImageRowAssignment {
  setIndex: number;
  /** ImageNumber within the set's own folder (1-based). */
  localNumber: number;
}

async function listFiles(dir: string): Promise<string[]> {
  const entries = await fs.promises.readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
}

function tableDelimiter(pipeline: Pipeline): string {
  const exporter = pipeline.modules.find((m) => m.enabled && m.name === 'ExportToSpreadsheet');
  return exporter && settingValue(exporter, 'Select the column delimiter') === 'Tab' ? '\t' : ',';
}

async function splitOutputs(
  pipeline: Pipeline,
  paths: AttemptPaths,
  sets: EngineImageSet[],
  outDir: string,
): Promise<EngineSetResult[]> {
  const prefix = spreadsheetFilePrefix(pipeline);
  const delimiter = tableDelimiter(pipeline);
  const tableExtension = delimiter === '\t' ? '.txt' : '.csv';
  const produced = await listFiles(paths.outDir);
  const tables = produced.filter((f) => f.toLowerCase().endsWith(tableExtension));
  const tableName = (rel: string) => {
    const base = path.basename(rel);
    return prefix && base.startsWith(prefix) ? base.slice(prefix.length) : base;
  };
  const imageTable = tables.find((t) => tableName(t) === `Image${tableExtension}`);
  if (!imageTable) {
    throw new ImageSetInputError(
      `CellProfiler wrote no Image${tableExtension} (files: ${produced.join(', ') || 'none'}); ExportToSpreadsheet must export the Image table`,
      sets.length === 1 ? sets[0].key : undefined,
    );
  }

  const setDirs = sets.map((s) => path.join(outDir, s.key));
  for (const dir of setDirs) {
    await fs.promises.rm(dir, { recursive: true, force: true });
    await fs.promises.mkdir(dir, { recursive: true });
  }
  const filesBySet = sets.map(() => new Set<string>());

  const { assignments, claimedFiles } = await assignImageRows(path.join(paths.outDir, imageTable), delimiter, paths, sets);

  const seenNames = new Set<string>();
  for (const table of tables) {
    const name = tableName(table);
    if (seenNames.has(name)) throw new Error(`CellProfiler wrote two tables named ${name}; cannot place both per set`);
    seenNames.add(name);
    const targets = setDirs.map((d) => path.join(d, name));
    await splitTable(path.join(paths.outDir, table), targets, assignments, delimiter);
    filesBySet.forEach((files) => files.add(name));
  }

  // Non-table outputs (SaveImages, …).
  for (const rel of produced) {
    if (tables.includes(rel)) continue;
    const owners = sets.length === 1 ? [0] : [...(claimedFiles.get(rel) ?? new Set<number>())];
    if (owners.length !== 1) continue;
    const owner = owners[0];
    const dest = path.join(setDirs[owner], rel);
    await fs.promises.mkdir(path.dirname(dest), { recursive: true });
    await fs.promises.copyFile(path.join(paths.outDir, rel), dest);
    filesBySet[owner].add(rel);
  }

  return sets.map((set, index) => ({ key: set.key, files: [...filesBySet[index]].sort() }));
}

/**
 * Reads Image.csv and decides which of our sets each CellProfiler image set (row) belongs to, from
 * the folders its PathName_* columns point at. Also collects which output files each row names.
 */
async function assignImageRows(
  imageTablePath: string,
  delimiter: string,
  paths: AttemptPaths,
  sets: EngineImageSet[],
): Promise<{ assignments: Map<string, ImageRowAssignment>; claimedFiles: Map<string, Set<number>> }> {
  const inputRoots = [paths.inputDir, await fs.promises.realpath(paths.inputDir)];
  const outputRoots = [paths.outDir, await fs.promises.realpath(paths.outDir)];
  const assignments = new Map<string, ImageRowAssignment>();
  const claimedFiles = new Map<string, Set<number>>();
  const rowsPerSet = sets.map(() => 0);

  const parser = fs.createReadStream(imageTablePath).pipe(parse({ delimiter, relax_quotes: true }));
  let header: string[] | undefined;
  for await (const record of parser as AsyncIterable<string[]>) {
    if (!header) {
      header = record;
      continue;
    }
    const row = new Map(header.map((column, i) => [column, record[i] ?? '']));
    const imageNumber = row.get('ImageNumber');
    if (imageNumber === undefined) throw new Error('Image table has no ImageNumber column');
    const owners = new Set<number>();
    for (const [column, value] of row) {
      if (!column.startsWith('PathName_') || value === '') continue;
      const setIndex = setIndexOfPath(value, inputRoots);
      if (setIndex !== undefined) owners.add(setIndex);
    }
    if (owners.size !== 1) {
      throw new Error(
        `CellProfiler image set ${imageNumber} ${owners.size === 0 ? 'names none of our input folders' : 'mixes files of several image sets'} in its PathName_ columns; cannot split outputs per set`,
      );
    }
    const [setIndex] = owners;
    if (setIndex >= sets.length) throw new Error(`CellProfiler image set ${imageNumber} points at an unknown input folder`);
    rowsPerSet[setIndex] += 1;
    // cpflow's number for the set when given (one field of view makes one CellProfiler image set;
    // should a set ever yield several rows, they follow it), else 1, 2, … within the set's folder.
    const wanted = sets[setIndex].imageNumber;
    assignments.set(imageNumber, { setIndex, localNumber: wanted === undefined ? rowsPerSet[setIndex] : wanted + rowsPerSet[setIndex] - 1 });

    // Output files named by this row (FileName_X + PathName_X, ObjectsFileName_X + ObjectsPathName_X).
    for (const [column, fileName] of row) {
      const match = /^(Objects)?FileName_(.+)$/.exec(column);
      if (!match || fileName === '') continue;
      const dir = row.get(`${match[1] ?? ''}PathName_${match[2]}`);
      if (!dir) continue;
      for (const root of outputRoots) {
        const rel = path.relative(root, path.resolve(dir, fileName));
        if (!rel.startsWith('..') && !path.isAbsolute(rel)) {
          const owners = claimedFiles.get(rel) ?? new Set<number>();
          owners.add(setIndex);
          claimedFiles.set(rel, owners);
          break;
        }
      }
    }
  }
  const missing = sets.filter((_, i) => rowsPerSet[i] === 0);
  if (missing.length > 0) {
    throw new ImageSetInputError(
      `CellProfiler made no image set from the files of ${missing.map((s) => s.key).join(', ')} (do the pipeline's NamesAndTypes rules match these file names?)`,
      missing.length === 1 && sets.length === 1 ? missing[0].key : undefined,
    );
  }
  return { assignments, claimedFiles };
}

function setIndexOfPath(dir: string, inputRoots: string[]): number | undefined {
  for (const root of inputRoots) {
    const rel = path.relative(root, path.resolve(dir));
    if (rel.startsWith('..') || path.isAbsolute(rel) || rel === '') continue;
    const first = rel.split(path.sep)[0];
    const match = /^s(\d{5})$/.exec(first);
    if (match) return Number(match[1]);
  }
  return undefined;
}

/**
 * Streams one table into per-set files. Rows go to the set their image number belongs to, with the
 * image number renumbered; tables without image numbers are copied whole into every set.
 */
async function splitTable(
  source: string,
  targets: string[],
  assignments: Map<string, ImageRowAssignment>,
  delimiter: string,
): Promise<void> {
  const writers: { stringifier: Stringifier; file: fs.WriteStream }[] = targets.map((target) => {
    const stringifier = stringify({ delimiter, record_delimiter: 'windows' });
    const file = fs.createWriteStream(target);
    stringifier.pipe(file);
    return { stringifier, file };
  });
  const write = async (index: number, record: string[]) => {
    const { stringifier } = writers[index];
    if (!stringifier.write(record)) await once(stringifier, 'drain');
  };

  const parser = fs.createReadStream(source).pipe(parse({ delimiter, relax_quotes: true }));
  let header: string[] | undefined;
  let numberColumns: number[] = [];
  let routeColumn = -1;
  try {
    for await (const record of parser as AsyncIterable<string[]>) {
      if (!header) {
        header = record;
        const plain = header.indexOf('ImageNumber');
        const first = header.indexOf('First Image Number');
        const second = header.indexOf('Second Image Number');
        if (plain >= 0) {
          routeColumn = plain;
          numberColumns = [plain];
        } else if (first >= 0) {
          routeColumn = first;
          numberColumns = second >= 0 ? [first, second] : [first];
        }
        for (let i = 0; i < writers.length; i++) await write(i, header);
        continue;
      }
      if (routeColumn < 0) {
        for (let i = 0; i < writers.length; i++) await write(i, record);
        continue;
      }
      const assignment = assignments.get(record[routeColumn]);
      if (!assignment) throw new Error(`${path.basename(source)}: row for unknown ImageNumber ${record[routeColumn]}`);
      const renumbered = [...record];
      for (const column of numberColumns) {
        const other = assignments.get(record[column]);
        // A relationship to an image set of another batch member cannot exist (sets are not
        // grouped together); keep the number if it ever does rather than invent one.
        if (other && other.setIndex === assignment.setIndex) renumbered[column] = String(other.localNumber);
      }
      await write(assignment.setIndex, renumbered);
    }
  } finally {
    for (const { stringifier } of writers) stringifier.end();
    await Promise.all(writers.map(({ file }) => finished(file)));
  }
}
