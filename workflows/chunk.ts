import { ActivityFailure, ApplicationFailure, CancellationScope, isCancellation, log } from '@temporalio/workflow';
import { DEFAULTS, type ChunkResult, type DispatchOptions, type ImageSetOutcome } from '../core/model';
import { analysis, analysisOptions, control } from './activities-proxy';
import { OutcomeMirror } from './outcome-mirror';

export interface ChunkWorkflowInput {
  experimentId: number;
  bucket: string;
  manifestKey: string;
  /** Image sets in flight at once within this chunk (its share of the experiment's window). */
  window: number;
  dispatch: DispatchOptions;
}

/**
 * Runs one chunk (at most a few hundred image sets) of an experiment: a bounded window of analysis
 * activities, their outcomes mirrored to MariaDB in batches. Chunks keep every execution's history
 * and pending-activity count small, whatever the experiment's size.
 */
export async function ImageSetChunkWorkflow(input: ChunkWorkflowInput): Promise<ChunkResult> {
  const sets = await control.loadChunkIndex({ bucket: input.bucket, manifestKey: input.manifestKey });
  const options = analysisOptions(input.dispatch);
  const { analyzeImageSets } = analysis(options);
  const result: ChunkResult = { done: 0, failed: 0, skipped: 0, failures: [] };
  const mirror = new OutcomeMirror(input.experimentId);
  const keyOf = (i: number): string => sets[i]?.key ?? `#${i}`;

  const record = (o: ImageSetOutcome, key: string): void => {
    if (o.status === 'done') {
      result.done++;
      if (o.skipped) result.skipped++;
    } else if (o.status === 'failed') {
      result.failed++;
      if (result.failures.length < DEFAULTS.RECENT_FAILURES_SHOWN) result.failures.push({ key, error: o.error ?? 'unknown error', attempts: o.attempts });
    }
    mirror.add(o);
  };

  const runBatch = async (indices: number[]): Promise<void> => {
    const keys = indices.map(keyOf);
    try {
      // The summary names the image set(s), so the Web UI shows which set an attempt belongs to.
      const outcomes = await analyzeImageSets.executeWithOptions({ ...options, summary: `analyze ${keys.join(', ')}` }, [
        { bucket: input.bucket, manifestKey: input.manifestKey, indices },
      ]);
      for (const o of outcomes) record(o, keys[indices.findIndex((i) => sets[i]?.id === o.imageSetId)] ?? String(o.imageSetId));
    } catch (err) {
      if (isCancellation(err)) {
        for (const i of indices) {
          const s = sets[i];
          if (s) mirror.addQuietly({ imageSetId: s.id, status: 'cancelled', attempts: 0, error: 'cancelled' });
        }
        throw err;
      }
      // Input errors and engine failures (both made non-retryable by the activity) fail only these sets;
      // outages never get here, they retry without an attempt limit.
      const cause = err instanceof ActivityFailure && err.cause ? err.cause : err;
      const message = cause instanceof Error ? cause.message : String(cause);
      const detail = cause instanceof ApplicationFailure ? (cause.details?.[0] as { attempt?: number } | undefined) : undefined;
      const attempts = detail?.attempt ?? input.dispatch.maxEngineAttempts;
      for (const i of indices) {
        const s = sets[i];
        if (s) record({ imageSetId: s.id, status: 'failed', attempts, error: message }, keyOf(i));
      }
      log.warn('image sets failed', { keys, error: message });
    }
  };

  try {
    await runWindowed(batchesOf(sets.length, input.dispatch.batchSize), Math.max(1, Math.ceil(input.window / input.dispatch.batchSize)), runBatch);
  } finally {
    // Outcomes gathered so far reach MariaDB even when the chunk is cancelled.
    await CancellationScope.nonCancellable(() => mirror.drain());
  }
  return result;
}

/** Positions 0…count-1 cut into consecutive batches of `size`. */
function batchesOf(count: number, size: number): number[][] {
  const batches: number[][] = [];
  for (let i = 0; i < count; i += size) batches.push(Array.from({ length: Math.min(size, count - i) }, (_, j) => i + j));
  return batches;
}

/** Run `work` over `items` with at most `limit` in flight (workflow-side: promises, no I/O). */
async function runWindowed<T>(items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  const running = new Set<Promise<void>>();
  for (const item of items) {
    while (running.size >= limit) await Promise.race(running);
    const p: Promise<void> = work(item).finally(() => running.delete(p));
    running.add(p);
  }
  await Promise.all(running);
}
