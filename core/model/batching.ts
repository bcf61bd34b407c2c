import * as DEFAULTS from './defaults';
import type { ImageSetOutcome } from './domain';

/**
 * Adaptive batching (issue 10): how many image sets one analysis activity gets, chosen from the
 * engine seconds per set the activities report, so that Temporal's cost per activity stays a small
 * fraction of the work whether a set takes 5 ms (the no-op engine) or a minute (CellProfiler).
 * Pure functions of activity results: the chunk workflow calls them and stays deterministic.
 */

export interface BatchBounds {
  engineTimeoutSeconds: number;
}

/**
 * The batch size for the next activity. Before anything was measured: 1 (the first sets measure).
 * Then ⌈overhead / (fraction × seconds per set)⌉, at most MAX_BATCH_SIZE and what fits in
 * ADAPTIVE_MAX_TIMEOUT_FRACTION of the engine time-out; at least 1. The window does not bound it:
 * with adaptive batching the window counts activities in flight, each one batch (chunk.ts).
 */
export function adaptiveBatchSize(secondsPerSet: number | undefined, bounds: BatchBounds): number {
  if (secondsPerSet === undefined || !Number.isFinite(secondsPerSet)) return 1;
  const perSet = Math.max(secondsPerSet, 1e-6);
  const wanted = Math.ceil(DEFAULTS.ACTIVITY_OVERHEAD_SECONDS / (DEFAULTS.ACTIVITY_OVERHEAD_FRACTION * perSet));
  const byTimeout = Math.floor((bounds.engineTimeoutSeconds * DEFAULTS.ADAPTIVE_MAX_TIMEOUT_FRACTION) / perSet);
  return Math.max(1, Math.min(wanted, DEFAULTS.MAX_BATCH_SIZE, byTimeout));
}

/**
 * The estimate after one activity's outcomes: the mean engine seconds of the sets it analysed
 * (skipped and failed sets cost no engine time and say nothing), averaged half and half with the
 * previous estimate so one odd batch does not swing the size. Unchanged when nothing was analysed.
 */
export function updatedSecondsPerSet(previous: number | undefined, outcomes: readonly ImageSetOutcome[]): number | undefined {
  const measured = outcomes.filter((o) => o.status === 'done' && !o.skipped && typeof o.engineSeconds === 'number' && Number.isFinite(o.engineSeconds));
  if (measured.length === 0) return previous;
  const mean = measured.reduce((sum, o) => sum + (o.engineSeconds ?? 0), 0) / measured.length;
  return previous === undefined ? mean : (previous + mean) / 2;
}

/** Engine seconds per set as people read them (milliseconds below a second). */
export function engineTime(seconds: number): string {
  return seconds >= 1 ? `${seconds.toFixed(1)} s` : `${(seconds * 1000).toFixed(seconds >= 0.01 ? 0 : 1)} ms`;
}
