import type { ExperimentProgress, ImageSetStatus } from '../core/model';

/**
 * One consistent set of counts for `cpflow status` from two sources that advance at different paces:
 * MariaDB (every set's outcome, mirrored within seconds) and the workflow's `progress` query (counts
 * added when a whole chunk of up to 400 sets reports back, and `running` = sets handed to chunks
 * that have not reported). Taken raw they contradicted each other ("20 done … 48 running of 48"):
 * done and failed take the furthest of the two, and running is what is left of the sets the
 * workflow has handed out, so done + failed + running + pending always equals the total.
 */
export interface StatusCounts {
  total: number;
  done: number;
  failed: number;
  running: number;
  pending: number;
}

export function reconcileCounts(
  db: Record<ImageSetStatus, number> & { total: number },
  progress: Pick<ExperimentProgress, 'done' | 'failed' | 'running' | 'total'> | undefined,
): StatusCounts {
  const total = Math.max(db.total, progress?.total ?? 0);
  const done = Math.min(total, Math.max(db.done, progress?.done ?? 0));
  const failed = Math.min(total - done, Math.max(db.failed, progress?.failed ?? 0));
  const ended = done + failed;
  // Handed to chunks and not yet reported: the workflow's running count includes sets MariaDB already has as ended.
  const handedOut = progress ? (progress.done + progress.failed + progress.running) : 0;
  const running = Math.max(0, Math.min(total - ended, handedOut - ended));
  return { total, done, failed, running, pending: total - ended - running };
}
