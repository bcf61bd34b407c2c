/**
 * One CellProfiler process: started detached in its own process group (so cancellation and
 * time-outs kill it and every child with one kill(-pid)), its log lines turned into progress, and a
 * failure classified from the module error CellProfiler reports.
 */
import { once } from 'node:events';
import readline from 'node:readline';
import execa from 'execa';
import { headlessEnv } from '../../../core/cellprofiler';
import { DEFAULTS } from '../../../core/model';
import { ImageSetInputError, type EngineImageSet, type EngineRunInput } from '../types';

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
  /** Module whose preparation failed ("Failed to prepare run for module X"): no image set was made. */
  prepareRunModule?: string;
  /**
   * CellProfiler could not load the whole pipeline (e.g. a plugin module it does not know). This build
   * then runs the modules it did load and still reports `Complete`: the run must not count.
   */
  pipelineLoadError?: string;
  /** CellProfiler's WARNING lines (first line of each, noise removed, deduplicated). */
  warnings: string[];
}

const MODULE_PROGRESS = /Image # (\d+), module (\S+) # (\d+)/;
const MODULE_ERROR = /Error detected during run of module (\S+)/;
const EXCEPTION_LINE = /^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)): ?(.*)$/;
const PREPARE_RUN_ERROR = /Failed to prepare run for module (\S+)/;
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

  const result: InvocationResult = { exitCode: undefined, stderrTail: [], warnings: [] };
  let lastImageNumber: number | undefined;
  let awaitingException = false;
  let awaitingLoadException = false;
  const consume = (stream: NodeJS.ReadableStream | null) => {
    if (!stream) return Promise.resolve();
    const lines = readline.createInterface({ input: stream, crlfDelay: Infinity });
    lines.on('line', (line) => {
      // CellProfiler logs to stderr; stdout lines (rare) are kept too, in arrival order.
      result.stderrTail.push(line);
      if (result.stderrTail.length > STDERR_TAIL_LINES) result.stderrTail.shift();
      const progress = MODULE_PROGRESS.exec(line);
      if (progress) {
        lastImageNumber = Number(progress[1]);
        input.onProgress?.(`CellProfiler image set ${progress[1]}/${setCount}: ${progress[2]} (module ${progress[3]})`);
        return;
      }
      const warning = WARNING_LINE.exec(line)?.[1]?.trim();
      if (warning && !WARNING_NOISE.some((isNoise) => isNoise(warning)) && !result.warnings.includes(warning)) {
        if (result.warnings.length < DEFAULTS.MAX_WARNINGS_PER_SET) result.warnings.push(warning);
      }
      if (PIPELINE_LOAD_ERROR.test(line) && result.pipelineLoadError === undefined) {
        result.pipelineLoadError = 'CellProfiler could not load the pipeline';
        awaitingLoadException = true;
        return;
      }
      if (awaitingLoadException && EXCEPTION_LINE.test(line)) {
        result.pipelineLoadError = `CellProfiler could not load the pipeline: ${line}`;
        awaitingLoadException = false;
        return;
      }
      const prepare = PREPARE_RUN_ERROR.exec(line);
      if (prepare && result.prepareRunModule === undefined) {
        result.prepareRunModule = prepare[1];
        awaitingException = true;
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

/** A pipeline CellProfiler could not load: the same for every attempt and every set, so final. */
export function pipelineLoadFailure(run: InvocationResult, sets: EngineImageSet[]): ImageSetInputError | undefined {
  if (!run.pipelineLoadError) return undefined;
  const plugin = /Could not find the (\S+) module/.exec(run.pipelineLoadError);
  const hint = plugin ? ` (${plugin[1]} is not a module of this CellProfiler: if it is a plugin, set CPFLOW_CELLPROFILER_PLUGINS on the workers)` : '';
  return new ImageSetInputError(`${run.pipelineLoadError}${hint}`, sets.length === 1 ? sets[0]?.key : undefined);
}

export function classifyFailure(run: InvocationResult, done: string | undefined, sets: EngineImageSet[]): Error {
  const doneText = done === undefined ? 'no done file' : `done file says ${JSON.stringify(done.trim())}`;
  const detail = run.spawnError
    ? `CellProfiler could not be started: ${run.spawnError}`
    : `CellProfiler failed (exit ${run.exitCode ?? 'none'}, ${doneText})`;
  const stderr = run.stderrTail.join('\n');
  // A module error on an image set is a property of that set's data (a file that does not decode, an
  // image the pipeline cannot handle): retrying cannot help. Resource exhaustion can, so it stays
  // retryable.
  const exhausted = /MemoryError|Killed|No space left on device/.test(run.errorException ?? '');
  if (run.prepareRunModule && !run.errorModule && !exhausted) {
    // The input modules made no image set from these files (rules matching none of them, a channel
    // with no file): the same files and pipeline fail the same way every time, so it is not retried.
    const which = sets.length === 1 ? `image set ${sets[0].key}` : `a batch of ${sets.length} image sets (${sets.map((s) => s.key).join(', ')})`;
    return new ImageSetInputError(
      `${which}: CellProfiler could not make image sets from the files (module ${run.prepareRunModule}${run.errorException ? `: ${run.errorException}` : ''})` +
        `${run.warnings.length ? `; CellProfiler said: ${run.warnings.join('; ')}` : ''}\n${detail}; last lines of stderr:\n${stderr}`,
      sets.length === 1 ? sets[0].key : undefined,
    );
  }
  if (run.errorModule && !exhausted) {
    const imageNo = run.errorImageNumber;
    const loading = IMAGE_LOADING_MODULES.has(run.errorModule);
    const what = loading ? 'could not load an image' : `module ${run.errorModule} failed`;
    const which =
      sets.length === 1
        ? `image set ${sets[0].key}`
        : `image set #${imageNo ?? '?'} of a batch of ${sets.length} (${sets.map((s) => s.key).join(', ')})`;
    // In a batch the failing set is not named: the caller reruns the sets one by one to find it.
    return new ImageSetInputError(
      `${which}: CellProfiler ${what}${run.errorException ? `: ${run.errorException}` : ''}\n${detail}; last lines of stderr:\n${stderr}`,
      sets.length === 1 ? sets[0].key : undefined,
    );
  }
  return new Error(`${detail}; last lines of stderr:\n${stderr}`);
}
