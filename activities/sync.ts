import { applyImageSetOutcomes, db, refreshExperimentCounts, setExperimentStatus } from '../core/db';
import type { SyncExperimentStatusInput, SyncImageSetsInput } from '../core/model';

/**
 * Sync activities mirror the workflow's truth into MariaDB. They run on the workflow pool's queue,
 * retry without limit while the database is down, and are idempotent, so the mirror converges.
 */

export async function syncImageSets(input: SyncImageSetsInput): Promise<void> {
  const pool = await db();
  // Moves the experiment's done/failed counts by what the batch changed, in the same transaction.
  await applyImageSetOutcomes(pool, input.experimentId, input.outcomes);
}

export async function syncExperimentStatus(input: SyncExperimentStatusInput): Promise<void> {
  const pool = await db();
  await refreshExperimentCounts(pool, input.experimentId);
  await setExperimentStatus(pool, input.experimentId, input.status, {
    error: input.error,
    summaryUri: input.summaryUri,
    reportUri: input.reportUri,
  });
}
