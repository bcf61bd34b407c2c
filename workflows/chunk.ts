import {
  ActivityFailure,
  ApplicationFailure,
  CancellationScope,
  getExternalWorkflowHandle,
  isCancellation,
  log,
  patched,
  setCurrentDetails,
  workflowInfo,
} from '@temporalio/workflow';
import {
  adaptiveBatchSize,
  DEFAULTS,
  engineTime,
  updatedSecondsPerSet,
  type BatchingState,
  type ChunkIndexEntry,
  type ChunkResult,
  type DispatchOptions,
  type EngineName,
  type ImageSetOutcome,
} from '../core/model';
import { analysis, analysisOptions, control } from './activities-proxy';
import { OutcomeMirror } from './outcome-mirror';
import { groupFinishedSignal } from './progress';

export interface ChunkWorkflowInput {
  experimentId: number;
  bucket: string;
  manifestKey: string;
  /** What may be in flight at once within this chunk (its share of the experiment's window): image sets, groups in a grouped stage, activities with adaptive batching. */
  window: number;
  dispatch: DispatchOptions;
  /** Routes the analysis activities to the engine's own task queue (absent in chunks started before routing: CellProfiler's queue). */
  engine?: EngineName;
  /** The stage the chunk belongs to ('' for a plain experiment). */
  stage?: string;
  /** Grouped stage: each activity runs one whole group (consecutive entries of the index with one group key). */
  grouped?: boolean;
  /** Later stages wait for this stage's groups: signal the parent as each group ends. */
  notifyParent?: boolean;
  /**
   * Adaptive batching (an experiment submitted without --batch-size; never for groups): each next
   * batch's size follows the engine seconds per set the finished activities reported
   * (core/model/batching.ts), starting from the estimate of earlier chunks when there is one.
   * Absent: every batch has `dispatch.batchSize` sets (also in chunks started before adaptive batching).
   */
  adaptive?: { secondsPerSet?: number };
}

/**
 * Runs one chunk (at most a few hundred image sets, or whole groups) of an experiment: a bounded
 * window of analysis activities, their outcomes mirrored to MariaDB in batches. Chunks keep every
 * execution's history and pending-activity count small, whatever the experiment's size.
 */
export async function ImageSetChunkWorkflow(input: ChunkWorkflowInput): Promise<ChunkResult> {
  const sets = await control.loadChunkIndex({ bucket: input.bucket, manifestKey: input.manifestKey });
  const options = analysisOptions(input.dispatch, input.engine);
  const { analyzeImageSets } = analysis(options);
  const stage = input.stage ?? '';
  const result: ChunkResult = { stage, done: 0, failed: 0, skipped: 0, failures: [] };
  const mirror = new OutcomeMirror(input.experimentId);
  const keyOf = (i: number): string => sets[i]?.key ?? `#${i}`;
  const reports: Array<Promise<void>> = [];

  const record = (o: ImageSetOutcome, key: string): void => {
    if (o.status === 'done') {
      result.done++;
      if (o.skipped) result.skipped++;
    } else if (o.status === 'failed') {
      result.failed++;
      if (result.failures.length < DEFAULTS.RECENT_FAILURES_SHOWN) {
        result.failures.push({ key, ...(stage ? { stage } : {}), error: o.error ?? 'unknown error', attempts: o.attempts });
      }
    }
    mirror.add(o);
  };

  /** Tells the parent a group ended, so later stages' partitions for it can start (or fail). */
  const reportGroup = (indices: number[], outcomes: ImageSetOutcome[], error?: string): void => {
    const parent = workflowInfo().parent;
    const group = sets[indices[0] ?? -1]?.group;
    if (!input.notifyParent || !input.grouped || !parent || group === undefined) return;
    const failed = outcomes.find((o) => o.status !== 'done');
    const ok = error === undefined && !failed && outcomes.length === indices.length;
    reports.push(
      getExternalWorkflowHandle(parent.workflowId).signal(groupFinishedSignal, {
        stage,
        group,
        ok,
        ...(ok ? {} : { error: error ?? failed?.error ?? 'not every image set of the group finished' }),
      }),
    );
  };

  // Adaptive batching: the estimate so far and the size chosen last (shown in the Web UI, returned).
  const batching: BatchingState | undefined = input.adaptive && !input.grouped ? { secondsPerSet: input.adaptive.secondsPerSet, batchSize: 0 } : undefined;
  const bounds = { engineTimeoutSeconds: input.dispatch.engineTimeoutSeconds };
  const nextBatchSize = (): number => {
    if (!batching) return input.dispatch.batchSize;
    const size = adaptiveBatchSize(batching.secondsPerSet, bounds);
    if (size !== batching.batchSize) {
      batching.batchSize = size;
      const perSet = batching.secondsPerSet === undefined ? 'not measured yet' : `${engineTime(batching.secondsPerSet)} of engine time per set`;
      setCurrentDetails(`Image sets per analysis activity: **${size}** (adaptive: ${perSet})`);
    }
    return size;
  };

  const runUnit = async (indices: number[]): Promise<void> => {
    const keys = indices.map(keyOf);
    try {
      // The summary names the image set(s), so the Web UI shows which set an attempt belongs to.
      const what = input.grouped
        ? `group ${sets[indices[0] ?? 0]?.group ?? '?'} (${keys.length} image sets)`
        : keys.length > 3
          ? `${keys[0]} … ${keys[keys.length - 1]} (${keys.length} image sets)`
          : keys.join(', ');
      const outcomes = await analyzeImageSets.executeWithOptions({ ...options, summary: `analyze ${stage ? `${stage} ` : ''}${what}` }, [
        { bucket: input.bucket, manifestKey: input.manifestKey, indices },
      ]);
      if (batching) batching.secondsPerSet = updatedSecondsPerSet(batching.secondsPerSet, outcomes);
      for (const o of outcomes) record(o, keys[indices.findIndex((i) => sets[i]?.id === o.imageSetId)] ?? String(o.imageSetId));
      reportGroup(indices, outcomes);
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
      reportGroup(indices, [], message);
      log.warn('image sets failed', { keys, error: message });
    }
  };

  try {
    if (batching) {
      // The window counts activities in flight; each next batch takes the size measured so far.
      await runAdaptive(sets.length, Math.max(1, input.window), nextBatchSize, runUnit);
    } else {
      const units = input.grouped ? groupsOf(sets) : batchesOf(sets.length, input.dispatch.batchSize);
      // A group is one engine invocation: the window counts groups then, as it counts batches otherwise.
      const limit = input.grouped ? Math.max(1, input.window) : Math.max(1, Math.ceil(input.window / input.dispatch.batchSize));
      await runWindowed(units, limit, runUnit);
    }
    await Promise.all(reports);
  } finally {
    // Outcomes gathered so far reach MariaDB even when the chunk is cancelled.
    await CancellationScope.nonCancellable(() => mirror.drain());
  }
  return batching ? { ...result, batching: { ...batching } } : result;
}

/**
 * Positions 0…count-1 in consecutive batches whose size `nextSize` decides as each one starts, with
 * at most `window` batches in flight. Workflow-side: promises, no I/O.
 */
function runAdaptive(count: number, window: number, nextSize: () => number, work: (indices: number[]) => Promise<void>): Promise<void> {
  let next = 0;
  return runInWindow(window, () => {
    if (next >= count) return undefined;
    const size = Math.min(nextSize(), count - next);
    const indices = Array.from({ length: size }, (_, j) => next + j);
    next += size;
    return indices;
  }, work);
}

/** Run `work` over `items` with at most `limit` in flight (workflow-side: promises, no I/O). */
function runWindowed<T>(items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  return runInWindow(limit, () => items[next++], work);
}

/** Marks histories whose cancelled chunks wait for every activity's cancellation (see runInWindow). */
const ALL_CANCELLATIONS_CONFIRMED = 'chunk-waits-for-every-cancelled-activity';

/**
 * The window both runners share: `work` over the units `nextUnit` gives (undefined: none left), at most
 * `limit` in flight. The next unit is taken only once there is room, so an adaptive batch is sized by
 * what finished before it. A unit rethrows only its cancellation; the others in the window are being
 * cancelled with it, and their promises settle once each activity has confirmed the cancellation
 * (WAIT_CANCELLATION_COMPLETED: its engine was stopped). The window waits for all of them before it
 * rethrows. Without that wait the chunk, and then the experiment, was recorded as cancelled at the
 * first confirmation while other engines could still be running. Histories recorded before the wait
 * replay without it (the patch marker).
 */
async function runInWindow<T>(limit: number, nextUnit: () => T | undefined, work: (unit: T) => Promise<void>): Promise<void> {
  const running = new Set<Promise<void>>();
  try {
    for (;;) {
      if (running.size >= limit) await Promise.race(running);
      const unit = nextUnit();
      if (unit === undefined) break;
      const p: Promise<void> = work(unit).finally(() => running.delete(p));
      running.add(p);
    }
    await Promise.all(running);
  } catch (err) {
    if (patched(ALL_CANCELLATIONS_CONFIRMED)) await Promise.allSettled([...running]);
    throw err;
  }
}

/** Positions 0…count-1 cut into consecutive batches of `size`. */
function batchesOf(count: number, size: number): number[][] {
  const batches: number[][] = [];
  for (let i = 0; i < count; i += size) batches.push(Array.from({ length: Math.min(size, count - i) }, (_, j) => i + j));
  return batches;
}

/** Positions grouped by their group key (the manifest lists a group's sets together). */
function groupsOf(sets: ChunkIndexEntry[]): number[][] {
  const byGroup = new Map<string, number[]>();
  sets.forEach((s, i) => byGroup.set(s.group, [...(byGroup.get(s.group) ?? []), i]));
  return [...byGroup.values()];
}
