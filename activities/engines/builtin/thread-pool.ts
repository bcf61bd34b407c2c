import fs from 'node:fs';
import path from 'node:path';
import { MessageChannel } from 'node:worker_threads';
import Piscina from 'piscina';
import { workerConfig } from '../../../core/config';
import { ImageSetInputError, type EngineSetResult } from '../types';
import type { ThreadOutcome, ThreadTask } from './thread';

/**
 * The builtin engine's worker-thread pool (piscina). Decoding, segmentation and measurement run here,
 * so the process's event loop stays free for heartbeats, S3 transfers and other activities whatever
 * the image size. One pool per process, as many threads as analysis slots (CPFLOW_ANALYZE_SLOTS; the
 * `-j` of `cpflow analyze-local`). Cancellation and the engine time-out abort the task, and piscina
 * terminates the thread running it: a segmentation stuck on a huge image stops at once, not at its
 * next checkpoint.
 */

let pool: Piscina | undefined;
let requestedThreads: number | undefined;

/** Size the pool before its first use (analyze-local's `-j`); the default is CPFLOW_ANALYZE_SLOTS. */
export function setBuiltinThreads(threads: number): void {
  if (!Number.isInteger(threads) || threads < 1) throw new RangeError(`builtin engine threads must be a positive integer, got ${threads}`);
  requestedThreads = threads;
  if (pool && pool.options.maxThreads !== threads) {
    const old = pool;
    pool = undefined;
    void old.close();
  }
}

/**
 * Where the thread's code is, and how to load it: compiled JavaScript next to this file in production
 * (dist/), or the TypeScript source under tsx and jest, where the thread registers tsx itself
 * (a worker thread does not inherit jest's transform, and tsx's own hooks only when started by tsx).
 */
function threadEntry(): { filename: string; execArgv?: string[] } {
  const compiled = path.join(__dirname, 'thread.js');
  if (!__filename.endsWith('.ts') && fs.existsSync(compiled)) return { filename: compiled };
  const filename = path.join(__dirname, 'thread.ts');
  const tsxLoaded = process.execArgv.some((arg) => arg.includes('tsx'));
  return tsxLoaded ? { filename } : { filename, execArgv: [...process.execArgv.filter(isLoaderFlag), '--require', require.resolve('tsx/cjs')] };
}

/** Flags a worker thread may be given (process-wide ones such as --cpu-prof are refused by Node). */
function isLoaderFlag(arg: string): boolean {
  return /^--(require|import|loader|experimental-|conditions|enable-source-maps)/.test(arg);
}

export function builtinThreadPool(): Piscina {
  if (pool) return pool;
  const threads = requestedThreads ?? workerConfig().CPFLOW_ANALYZE_SLOTS;
  pool = new Piscina({
    ...threadEntry(),
    minThreads: threads,
    maxThreads: threads,
    // A thread per slot, kept: loading sharp and the engine in a fresh thread costs ~0.3 s.
    idleTimeout: 60_000,
    // One task per thread at a time: a set's memory (a 10240² image is ~2 GB decoded) is its own.
    concurrentTasksPerWorker: 1,
  });
  return pool;
}

/** Close the pool (threads end once their tasks do); a later call to builtinThreadPool() makes a new one. */
export async function closeBuiltinThreadPool(): Promise<void> {
  const closing = pool;
  pool = undefined;
  await closing?.close();
}

export interface ThreadRunOptions {
  /** Cancellation of the activity: the thread running the set is terminated. */
  signal?: AbortSignal;
  /** Milliseconds left for this set; past them the thread is terminated and a TimeoutError thrown. */
  timeoutMs?: number;
  onProgress?: (detail: string) => void;
}

/** Analyse one image set in the pool. Input errors come back as ImageSetInputError, as in-process. */
export async function runSetInThread(task: Omit<ThreadTask, 'progress'>, options: ThreadRunOptions = {}): Promise<EngineSetResult> {
  const signals: AbortSignal[] = [];
  if (options.signal) signals.push(options.signal);
  const timeout = options.timeoutMs !== undefined ? AbortSignal.timeout(Math.max(1, options.timeoutMs)) : undefined;
  if (timeout) signals.push(timeout);
  if (options.signal?.aborted) throw abortError();
  const channel = new MessageChannel();
  channel.port1.on('message', (detail: unknown) => {
    if (typeof detail === 'string') options.onProgress?.(detail);
  });
  let outcome: ThreadOutcome;
  try {
    const threadTask: ThreadTask = { ...cloneable(task), progress: channel.port2 };
    outcome = (await builtinThreadPool().run(threadTask, {
      transferList: [channel.port2],
      signal: signals.length > 0 ? AbortSignal.any(signals) : undefined,
    })) as ThreadOutcome;
  } catch (err) {
    if (timeout?.aborted && !options.signal?.aborted) {
      const error = new Error(`builtin engine gave up after ${options.timeoutMs} ms on image set ${task.imageSet.key}`);
      error.name = 'TimeoutError';
      throw error;
    }
    if (options.signal?.aborted) throw abortError();
    throw err;
  } finally {
    channel.port1.close();
  }
  if (!outcome.ok) throw new ImageSetInputError(outcome.inputError, outcome.setKey);
  return outcome.result;
}

/** A plain-data copy of the task: nothing that cannot be cloned into the thread. */
function cloneable(task: Omit<ThreadTask, 'progress'>): Omit<ThreadTask, 'progress'> {
  return {
    imageSet: { key: task.imageSet.key, metadata: { ...task.imageSet.metadata }, files: task.imageSet.files.map((f) => ({ channel: f.channel, path: f.path })), imageNumber: task.imageSet.imageNumber },
    imageNumber: task.imageNumber,
    settings: { ...task.settings },
    identity: { ...task.identity },
    outDir: task.outDir,
  };
}

function abortError(): Error {
  const error = new Error('builtin engine run was aborted');
  error.name = 'AbortError';
  return error;
}
