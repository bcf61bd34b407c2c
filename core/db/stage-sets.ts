import type { ImageSetStatus } from '../model/domain';
import { DEFAULTS } from '../model';
import type { StageProgress } from '../model/stages';
import type { Db } from './pool';
import { refreshExperimentCounts } from './experiments';
import { IMAGE_SET_COLUMNS, type PartitionRef } from './image-sets';
import { affectedSchema, groupStatusCountRowSchema, imageSetRowSchema, stageStatusCountRowSchema } from './rows';

/**
 * Image sets by stage, group and partition: what staged experiments release and fail, and what
 * `cpflow status` shows per stage (failed sets with their reasons, CellProfiler's warnings).
 */

/**
 * Fails the sets of a partition that can no longer run (its upstream group failed, or did not write
 * the file the stage needs). Sets already done are left alone. Returns how many were failed and the
 * first few keys.
 */
export async function failPartitionSets(
  pool: Db,
  p: PartitionRef,
  error: string,
): Promise<{ failed: number; keys: string[] }> {
  const keys = await pool.query<Array<{ set_key: string }>>(
    `SELECT set_key FROM image_set WHERE experiment_id = ? AND stage = ? AND partition_key = ? AND status IN ('pending','running')
     ORDER BY id LIMIT ?`,
    [p.experimentId, p.stage, p.partition, DEFAULTS.RECENT_FAILURES_SHOWN],
  );
  const res = affectedSchema.parse(
    await pool.query(
      `UPDATE image_set SET status = 'failed', error = ?, finished_at = NOW(3)
       WHERE experiment_id = ? AND stage = ? AND partition_key = ? AND status IN ('pending','running')`,
      [error, p.experimentId, p.stage, p.partition],
    ),
  );
  await refreshExperimentCounts(pool, p.experimentId);
  return { failed: res.affectedRows, keys: keys.map((k) => String(k.set_key)) };
}

/** Distinct partitions of a stage that still have sets to run. */
export async function pendingPartitions(pool: Db, experimentId: number, stage: string): Promise<string[]> {
  const rows = await pool.query<Array<{ partition_key: string }>>(
    `SELECT DISTINCT partition_key FROM image_set WHERE experiment_id = ? AND stage = ? AND status IN ('pending','running') ORDER BY partition_key`,
    [experimentId, stage],
  );
  return rows.map((r) => String(r.partition_key));
}

/** Status counts per group of a stage. */
export async function groupStatusCounts(pool: Db, experimentId: number, stage: string): Promise<Map<string, Record<ImageSetStatus, number>>> {
  const rows = await pool.query<unknown[]>(
    'SELECT group_key, status, COUNT(*) AS n FROM image_set WHERE experiment_id = ? AND stage = ? GROUP BY group_key, status',
    [experimentId, stage],
  );
  const map = new Map<string, Record<ImageSetStatus, number>>();
  for (const r of rows.map((row) => groupStatusCountRowSchema.parse(row))) {
    const counts = map.get(r.group_key) ?? { pending: 0, running: 0, done: 0, failed: 0, cancelled: 0 };
    counts[r.status] = r.n;
    map.set(r.group_key, counts);
  }
  return map;
}

/** Counts per stage (in the order given), for `cpflow status`. */
export async function stageCounts(pool: Db, experimentId: number, stages: string[]): Promise<Array<StageProgress & { running: number; pending: number }>> {
  const rows = await pool.query<unknown[]>(
    'SELECT stage, status, COUNT(*) AS n FROM image_set WHERE experiment_id = ? GROUP BY stage, status',
    [experimentId],
  );
  const parsed = rows.map((row) => stageStatusCountRowSchema.parse(row));
  return stages.map((name) => {
    const of = (status: ImageSetStatus) => parsed.filter((r) => r.stage === name && r.status === status).reduce((a, r) => a + r.n, 0);
    const total = parsed.filter((r) => r.stage === name).reduce((a, r) => a + r.n, 0);
    return { name, total, done: of('done'), failed: of('failed') + of('cancelled'), skipped: 0, running: of('running'), pending: of('pending') };
  });
}

/** Failed sets with their reasons (first `limit`, in id order) and how many there are. */
export async function failedImageSets(
  pool: Db,
  experimentId: number,
  limit: number,
): Promise<{ total: number; sets: Array<{ stage: string; key: string; attempts: number; error: string }> }> {
  const rows = await pool.query<Array<{ stage: string; set_key: string; attempts: number; error: string | null }>>(
    `SELECT stage, set_key, attempts, error FROM image_set WHERE experiment_id = ? AND status IN ('failed','cancelled') ORDER BY id LIMIT ?`,
    [experimentId, limit],
  );
  const [count] = await pool.query<Array<{ n: number }>>(
    `SELECT COUNT(*) AS n FROM image_set WHERE experiment_id = ? AND status IN ('failed','cancelled')`,
    [experimentId],
  );
  return {
    total: Number(count?.n ?? 0),
    sets: rows.map((r) => ({ stage: String(r.stage), key: String(r.set_key), attempts: Number(r.attempts), error: r.error ?? 'unknown error' })),
  };
}

/** Image sets with engine warnings: how many, and the first few with their warnings. */
export async function setsWithWarnings(
  pool: Db,
  experimentId: number,
  limit: number,
): Promise<{ total: number; sets: Array<{ stage: string; key: string; warnings: string[] }> }> {
  const rows = await pool.query<unknown[]>(
    `SELECT ${IMAGE_SET_COLUMNS} FROM image_set WHERE experiment_id = ? AND warnings IS NOT NULL ORDER BY id LIMIT ?`,
    [experimentId, limit],
  );
  const [count] = await pool.query<Array<{ n: number }>>(
    `SELECT COUNT(*) AS n FROM image_set WHERE experiment_id = ? AND warnings IS NOT NULL`,
    [experimentId],
  );
  return {
    total: Number(count?.n ?? 0),
    sets: rows.map((r) => imageSetRowSchema.parse(r)).map((r) => ({ stage: r.stage, key: r.set_key, warnings: r.warnings })),
  };
}


/**
 * How the latest analysed sets were batched: the size of the newest analysis activity and the mean
 * engine seconds per set over the newest `recent` analysed sets (null columns: before adaptive batching).
 */
export async function recentBatching(pool: Db, experimentId: number, recent: number): Promise<{ batchSize: number; secondsPerSet: number; sets: number } | undefined> {
  const rows = await pool.query<Array<{ batch_size: number | null; engine_seconds: number | null }>>(
    `SELECT batch_size, engine_seconds FROM image_set
     WHERE experiment_id = ? AND status = 'done' AND skipped = 0 AND batch_size IS NOT NULL AND engine_seconds IS NOT NULL
     ORDER BY finished_at DESC, id DESC LIMIT ?`,
    [experimentId, recent],
  );
  if (rows.length === 0) return undefined;
  const secondsPerSet = rows.reduce((sum, r) => sum + Number(r.engine_seconds ?? 0), 0) / rows.length;
  return { batchSize: Number(rows[0]?.batch_size ?? 1), secondsPerSet, sets: rows.length };
}
