/**
 * One CellProfiler process: started detached in its own process group (so cancellation and
 * time-outs kill it and every child with one kill(-pid)), its log lines turned into progress, and a
 * failure classified: deterministic pipeline failures are final (PipelineRunError), what the machine
 * caused (a signal, no memory or disk, a failed start) is retried.
 */
import { once } from 'node:events';
import path from 'node:path';
import readline from 'node:readline';
import execa from 'execa';
import { headlessEnv } from '../../../core/cellprofiler';
import { DEFAULTS } from '../../../core/model';
import { PipelineRunError, type EngineImageSet, type EngineRunInput } from '../types';

const STDERR_TAIL_LINES = 40;
/** Modules that load images; an error there means the image itself could not be read. */
const IMAGE_LOADING_MODULES = new Set(['Images', 'Metadata', 'NamesAndTypes', 'Groups', 'LoadData', 'LoadImages']);

export interface InvocationResult {
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
  /**
   * CellProfiler could not load the whole pipeline (e.g. a plugin module it does not know). This build
   * then runs the modules it did load and still reports `Complete`: the run must not count.
   */
  pipelineLoadError?: string;
  /** CellProfiler's WARNING lines (first line of each, noise removed, deduplicated). */
  warnings: string[];
}

const MODULE_PROGRESS = /Image # (\d+), module (\S+) # (\d+)/;
const MODULE_ERROR = /Error detected during run of module (\w+)/;
const EXCEPTION_LINE = /^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)): ?(.*)$/;
const PIPELINE_LOAD_ERROR = /Failed to load pipeline/;
const WARNING_LINE = /^\[CP - WARNING\] [^:]+::[^:]+: (.+)$/;
/** Warnings every headless run of this build logs; they say nothing about the pipeline or the images. */
const WARNING_NOISE: Array<(warning: string) => boolean> = [
  (w) => /MySQL could not be loaded|Workspace file list is empty|^Multiple definitions of module/.test(w),
  // Logged whenever an illumination function (.npy) is loaded, even when nothing changes.
  (w) => {
    const m = /^Rescale range was (.*), now (.*)$/.exec(w);
    return m !== null && m[1] === m[2];
  },
];
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

/**
 * Reads CellProfiler's log, line by line, into an InvocationResult: progress, the module that
 * failed and its exception, load failures, warnings. The CLI path and the warm process (warm.ts)
 * feed it the same lines, so both classify a run the same way.
 */
export class CellProfilerLog {
  readonly result: InvocationResult = { exitCode: undefined, stderrTail: [], ranAnImageSet: false, noImageSets: false, warnings: [] };
  private lastImageNumber: number | undefined;
  private awaitingException = false;
  private awaitingLoadException = false;

  constructor(
    private readonly setCount: number,
    private readonly onProgress?: (detail: string) => void,
  ) {}

  line(line: string): void {
    const result = this.result;
    result.stderrTail.push(line);
    if (result.stderrTail.length > STDERR_TAIL_LINES) result.stderrTail.shift();
    if (NO_IMAGE_SETS.test(line)) result.noImageSets = true;
    const warning = WARNING_LINE.exec(line)?.[1]?.trim();
    if (warning && !WARNING_NOISE.some((isNoise) => isNoise(warning)) && !result.warnings.includes(warning)) {
      if (result.warnings.length < DEFAULTS.MAX_WARNINGS_PER_SET) result.warnings.push(warning);
    }
    if (PIPELINE_LOAD_ERROR.test(line) && result.pipelineLoadError === undefined) {
      result.pipelineLoadError = 'CellProfiler could not load the pipeline';
      this.awaitingLoadException = true;
    } else if (this.awaitingLoadException && EXCEPTION_LINE.test(line.trim())) {
      result.pipelineLoadError = `CellProfiler could not load the pipeline: ${line.trim()}`;
      this.awaitingLoadException = false;
    }
    const anyException = EXCEPTION_LINE.exec(line.trim());
    if (anyException && !/^ModuleNotFoundError: No module named 'MySQLdb'/.test(line.trim())) {
      // (MySQLdb: CellProfiler logs its guarded, expected import failure at every start.)
      result.lastException = line.trim();
    }
    const progress = MODULE_PROGRESS.exec(line);
    if (progress) {
      result.ranAnImageSet = true;
      this.lastImageNumber = Number(progress[1]);
      this.onProgress?.(`CellProfiler image set ${progress[1]}/${this.setCount}: ${progress[2]} (module ${progress[3]})`);
      return;
    }
    const moduleError = MODULE_ERROR.exec(line);
    if (moduleError && result.errorModule === undefined) {
      result.errorModule = moduleError[1];
      result.errorImageNumber = this.lastImageNumber;
      this.awaitingException = true;
      return;
    }
    if (this.awaitingException) {
      const exception = EXCEPTION_LINE.exec(line);
      if (exception) {
        result.errorException = line;
        this.awaitingException = false;
      }
    }
  }
}

export async function invoke(
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

  const log = new CellProfilerLog(setCount, input.onProgress);
  const result = log.result;
  const consume = (stream: NodeJS.ReadableStream | null) => {
    if (!stream) return Promise.resolve();
    const lines = readline.createInterface({ input: stream, crlfDelay: Infinity });
    // CellProfiler logs to stderr; stdout lines (rare) are kept too, in arrival order.
    lines.on('line', (line) => log.line(line));
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

export function abortError(signal: AbortSignal | undefined): Error {
  const reason: unknown = signal?.reason;
  if (reason instanceof Error) return reason;
  const err = new Error('CellProfiler run cancelled');
  err.name = 'AbortError';
  return err;
}

/** A pipeline CellProfiler could not load: the same for every attempt and every set, so final. */
export function pipelineLoadFailure(run: InvocationResult, sets: EngineImageSet[]): PipelineRunError | undefined {
  if (!run.pipelineLoadError) return undefined;
  const plugin = /Could not find the (\S+) module/.exec(run.pipelineLoadError);
  const hint = plugin ? ` (${plugin[1]} is not a module of this CellProfiler: if it is a plugin, set CPFLOW_CELLPROFILER_PLUGINS on the workers)` : '';
  return new PipelineRunError(`${run.pipelineLoadError}${hint}`, sets.length === 1 ? sets[0]?.key : undefined, plugin?.[1]);
}

export function classifyFailure(run: InvocationResult, done: string | undefined, sets: EngineImageSet[]): Error {
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
        `(do the pipeline's NamesAndTypes rules match these file names?)${run.warnings.length ? `; CellProfiler said: ${run.warnings.join('; ')}` : ''}\n${detail}; last lines of stderr:\n${stderr}`,
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
