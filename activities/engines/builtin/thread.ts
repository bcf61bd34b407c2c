import type { MessagePort } from 'node:worker_threads';
import { ImageSetInputError, type EngineSetResult } from '../types';
import { analyseImageSet, type SetTask } from './analyze-set';

/**
 * Entry point of the builtin engine's worker threads (loaded by piscina, see thread-pool.ts). One call
 * analyses one image set. Errors cross a thread boundary as plain `Error`s (structured clone keeps
 * neither the class nor extra fields), so an input error comes back as a value and thread-pool.ts
 * rebuilds the ImageSetInputError; anything else is thrown and stays an engine failure.
 */

export interface ThreadTask extends SetTask {
  /** Stage reports ("P1-A01-s1: segmenting DNA") go back through this port, for heartbeat details. */
  progress?: MessagePort;
}

export type ThreadOutcome = { ok: true; result: EngineSetResult } | { ok: false; inputError: string; setKey?: string };

export default async function analyseInThread(task: ThreadTask): Promise<ThreadOutcome> {
  const { progress, ...setTask } = task;
  try {
    const result = await analyseImageSet(setTask, (detail) => progress?.postMessage(detail));
    return { ok: true, result };
  } catch (err) {
    if (err instanceof ImageSetInputError) return { ok: false, inputError: err.message, setKey: err.setKey };
    throw err;
  } finally {
    progress?.close();
  }
}
