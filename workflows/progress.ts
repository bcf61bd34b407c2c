import { defineQuery, defineSignal } from '@temporalio/workflow';

/** Signals and queries of the ExperimentWorkflow, beside it so clients import them from one place. */

export type ExperimentPhase = 'starting' | 'analyzing' | 'waiting-for-images' | 'reducing' | 'finished' | 'cancelled';

export interface ExperimentProgress {
  experimentId: number;
  phase: ExperimentPhase;
  /** Image sets known to this run so far (grows while an open experiment receives sets). */
  total: number;
  done: number;
  failed: number;
  /** Done because provenance.json proved the work was already finished (counted in `done`). */
  skipped: number;
  running: number;
  sealed: boolean;
  /** How many times this workflow has continued as new (history stays bounded). */
  runsSoFar: number;
  recentFailures: Array<{ key: string; error: string; attempts: number }>;
}

export const progressQuery = defineQuery<ExperimentProgress>('progress');
/** A submitter or the watcher added image sets to an open experiment: look for them. */
export const imageSetsAddedSignal = defineSignal('imageSetsAdded');
/** The experiment is closed: no more image sets will come. */
export const sealedSignal = defineSignal('sealed');

/** Progress of one chunk child, queried by nobody but returned to its parent. */
export interface ChunkResult {
  done: number;
  failed: number;
  skipped: number;
  failures: Array<{ key: string; error: string; attempts: number }>;
}
