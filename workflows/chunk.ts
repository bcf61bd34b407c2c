import { ActivityFailure, ApplicationFailure, CancellationScope, isCancellation, log, sleep } from '@temporalio/workflow';
import type { ImageSetOutcome } from '../activities/lib/db';
import { analyze, analyzeOptions, control } from './activities-proxy';
import type { ChunkResult } from './progress';

export interface ChunkWorkflowInput {
  experimentId: number;
  bucket: string;
  manifestKey: string;
  /** Image sets in flight at once within this chunk. */
  window: number;
  /** Image sets per engine invocation. */
  batchSize: number;
  maxAttempts: number;
  activityTimeoutMinutes: number;
}

const SYNC_BATCH = 100;
const SYNC_EVERY_MS = 2_000;

/**
 * Runs one chunk (at most a few hundred image sets) of an experiment: a bounded window of analysis
 * activities, their outcomes mirrored to MariaDB in batches. Chunks keep every execution's history
 * and pending-activity count small, whatever the experiment's size.
 */
export async function ImageSetChunkWorkflow(input: ChunkWorkflowInput): Promise<ChunkResult> {
  const sets = await control.loadChunkIndex({ bucket: input.bucket, manifestKey: input.manifestKey });
  const options = analyzeOptions(input.activityTimeoutMinutes);
  const { analyzeImageSets } = analyze(options);
  const result: ChunkResult = { done: 0, failed: 0, skipped: 0, failures: [] };

  // --- batched mirror to MariaDB: never awaited by the analysis path, flushed in order, one at a time.
  let pending: ImageSetOutcome[] = [];
  let syncChain: Promise<void> = Promise.resolve();
  const flush = (): void => {
    if (pending.length === 0) return;
    const outcomes = pending;
    pending = [];
    syncChain = syncChain.then(() =>
      CancellationScope.nonCancellable(() => control.syncImageSets({ experimentId: input.experimentId, outcomes })),
    );
  };
  // A flush timer runs only while unsynced outcomes wait, so an idle chunk adds no timer events.
  let timerArmed = false;
  const armTimer = (): void => {
    if (timerArmed) return;
    timerArmed = true;
    void CancellationScope.nonCancellable(() => sleep(SYNC_EVERY_MS)).then(() => {
      timerArmed = false;
      flush();
    });
  };
  const record = (o: ImageSetOutcome, key: string): void => {
    if (o.status === 'done') {
      result.done++;
      if (o.skipped) result.skipped++;
    } else if (o.status === 'failed') {
      result.failed++;
      if (result.failures.length < 20) result.failures.push({ key, error: o.error ?? 'unknown error', attempts: o.attempts });
    }
    pending.push(o);
    if (pending.length >= SYNC_BATCH) flush();
    else armTimer();
  };

  // --- the window of analysis activities
  const batches: number[][] = [];
  for (let i = 0; i < sets.length; i += input.batchSize) {
    batches.push(sets.slice(i, i + input.batchSize).map((_, j) => i + j));
  }
  const keyOf = (i: number): string => sets[i]?.key ?? `#${i}`;
  const runBatch = async (indices: number[]): Promise<void> => {
    const keys = indices.map(keyOf);
    try {
      // The summary names the image set(s), so the Web UI shows which set an attempt belongs to.
      const outcomes = await analyzeImageSets.executeWithOptions({ ...options, summary: `analyze ${keys.join(', ')}` }, [
        { bucket: input.bucket, manifestKey: input.manifestKey, indices, maxEngineAttempts: input.maxAttempts },
      ]);
      for (const o of outcomes) record(o, keys[indices.findIndex((i) => sets[i]?.id === o.imageSetId)] ?? String(o.imageSetId));
    } catch (err) {
      if (isCancellation(err)) {
        for (const i of indices) {
          const s = sets[i];
          if (s) pending.push({ imageSetId: s.id, status: 'cancelled', attempts: 0, error: 'cancelled' });
        }
        throw err;
      }
      // Input errors and engine failures (both made non-retryable by the activity) fail only these sets;
      // outages never get here, they retry without an attempt limit.
      const cause = err instanceof ActivityFailure && err.cause ? err.cause : err;
      const message = cause instanceof Error ? cause.message : String(cause);
      const detail = cause instanceof ApplicationFailure ? (cause.details?.[0] as { attempt?: number } | undefined) : undefined;
      const attempts = detail?.attempt ?? input.maxAttempts;
      for (const i of indices) {
        const s = sets[i];
        if (s) record({ imageSetId: s.id, status: 'failed', attempts, error: message }, keyOf(i));
      }
      log.warn('image sets failed', { keys, error: message });
    }
  };

  try {
    const running = new Set<Promise<void>>();
    for (const indices of batches) {
      while (running.size >= Math.max(1, Math.ceil(input.window / input.batchSize))) await Promise.race(running);
      const p: Promise<void> = runBatch(indices).finally(() => running.delete(p));
      running.add(p);
    }
    await Promise.all(running);
  } finally {
    // Outcomes gathered so far reach MariaDB even when the chunk is cancelled.
    flush();
    await CancellationScope.nonCancellable(() => syncChain);
  }
  return result;
}
