import {
  applyImageSetOutcomes,
  db,
  refreshExperimentCounts,
  setExperimentStatus,
  type ExperimentStatus,
  type ImageSetOutcome,
} from './lib/db';

/**
 * Sync activities mirror the workflow's truth into MariaDB. They run on the workflow pool's queue,
 * retry without limit while the database is down, and are idempotent, so the mirror converges.
 */

export async function syncImageSets(input: { experimentId: number; outcomes: ImageSetOutcome[] }): Promise<void> {
  const pool = await db();
  await applyImageSetOutcomes(pool, input.experimentId, input.outcomes);
  await refreshExperimentCounts(pool, input.experimentId);
}

export async function syncExperimentStatus(input: {
  experimentId: number;
  status: ExperimentStatus;
  error?: string | null;
  summaryUri?: string;
  reportUri?: string;
}): Promise<void> {
  const pool = await db();
  await refreshExperimentCounts(pool, input.experimentId);
  await setExperimentStatus(pool, input.experimentId, input.status, {
    error: input.error,
    summaryUri: input.summaryUri,
    reportUri: input.reportUri,
  });
}
