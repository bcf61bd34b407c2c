import type { ImageSetOutcome, ImageSetStatus } from '../model/domain';
import { inTransaction, type Conn, type Db } from './pool';
import { addToExperimentCounts, lockExperimentCounts } from './experiments';
import { affectedSchema, imageFileRowSchema, imageSetRowSchema, statusCountRowSchema, type ImageFileRow, type ImageSetRow } from './rows';

/** Image sets and their files: registration, the workflow's pages, outcomes mirrored from Temporal. */

export interface NewImageSet {
  key: string;
  metadata: Record<string, string>;
  files: Array<{ channel: string; uri: string; size: number; checksum: string }>;
}

const INSERT_PAGE = 500;

/**
 * Insert (or refresh) image sets and their files. Returns how many of them are new to the experiment,
 * so callers can keep `experiment.total_sets` up to date without recounting it.
 */
export async function insertImageSetsOn(conn: Conn, experimentId: number, sets: NewImageSet[]): Promise<number> {
  let added = 0;
  for (let i = 0; i < sets.length; i += INSERT_PAGE) {
    const page = sets.slice(i, i + INSERT_PAGE);
    const keys = [...new Set(page.map((s) => s.key))];
    const existing = await countKeys(conn, experimentId, keys);
    await conn.batch(
      `INSERT INTO image_set (experiment_id, set_key, metadata) VALUES (?, ?, ?)
       ON DUPLICATE KEY UPDATE metadata = VALUES(metadata)`,
      page.map((s) => [experimentId, s.key, JSON.stringify(s.metadata)]),
    );
    const ids = await conn.query<unknown[]>(`SELECT id, set_key FROM image_set WHERE experiment_id = ? AND set_key IN (?)`, [
      experimentId,
      keys,
    ]);
    added += ids.length - existing;
    const idByKey = new Map(ids.map((r) => imageSetRowSchema.pick({ id: true, set_key: true }).parse(r)).map((r) => [r.set_key, r.id]));
    const fileRows = page.flatMap((s) => s.files.map((f) => [idByKey.get(s.key), f.channel, f.uri, f.size, f.checksum]));
    if (fileRows.length > 0) {
      await conn.batch(
        `INSERT INTO image_file (image_set_id, channel, uri, size, checksum) VALUES (?, ?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE uri = VALUES(uri), size = VALUES(size), checksum = VALUES(checksum)`,
        fileRows,
      );
    }
  }
  return added;
}

async function countKeys(conn: Conn, experimentId: number, keys: string[]): Promise<number> {
  if (keys.length === 0) return 0;
  const rows = await conn.query<Array<{ n: number | bigint }>>(
    'SELECT COUNT(*) AS n FROM image_set WHERE experiment_id = ? AND set_key IN (?)',
    [experimentId, keys],
  );
  return Number(rows[0]?.n ?? 0);
}

/** Add image sets (and their files) to an experiment; re-registering the same set is a no-op upsert. */
export async function upsertImageSets(pool: Db, experimentId: number, sets: NewImageSet[]): Promise<number> {
  await inTransaction(pool, async (conn) => {
    await lockExperimentCounts(conn, experimentId);
    const added = await insertImageSetsOn(conn, experimentId, sets);
    await addToExperimentCounts(conn, experimentId, { total: added });
  });
  return sets.length;
}

const IMAGE_SET_COLUMNS = 'id, experiment_id, set_key, metadata, status, attempts, skipped, output_prefix, error';

/** A page of sets still to run, in id order after `afterId` (the workflow's cursor). */
export async function pendingImageSets(
  pool: Db,
  experimentId: number,
  afterId: number,
  limit: number,
): Promise<Array<ImageSetRow & { files: ImageFileRow[] }>> {
  const rows = await pool.query<unknown[]>(
    `SELECT ${IMAGE_SET_COLUMNS}
     FROM image_set WHERE experiment_id = ? AND id > ? AND status IN ('pending','running') ORDER BY id LIMIT ?`,
    [experimentId, afterId, limit],
  );
  const sets = rows.map((r) => imageSetRowSchema.parse(r));
  if (sets.length === 0) return [];
  const fileRows = await pool.query<unknown[]>(
    `SELECT image_set_id, channel, uri, size, checksum FROM image_file WHERE image_set_id IN (?) ORDER BY channel`,
    [sets.map((s) => s.id)],
  );
  const bySet = new Map<number, ImageFileRow[]>();
  for (const f of fileRows.map((r) => imageFileRowSchema.parse(r))) bySet.set(f.image_set_id, [...(bySet.get(f.image_set_id) ?? []), f]);
  return sets.map((s) => ({ ...s, files: bySet.get(s.id) ?? [] }));
}

/** Every set of an experiment, in id order, one page at a time (bounded memory at 100,000 sets). */
export async function* allImageSets(pool: Db, experimentId: number, pageSize = 1000): AsyncGenerator<ImageSetRow> {
  let afterId = 0;
  for (;;) {
    const rows = await pool.query<unknown[]>(
      `SELECT ${IMAGE_SET_COLUMNS} FROM image_set WHERE experiment_id = ? AND id > ? ORDER BY id LIMIT ?`,
      [experimentId, afterId, pageSize],
    );
    if (rows.length === 0) return;
    for (const r of rows) {
      const row = imageSetRowSchema.parse(r);
      afterId = row.id;
      yield row;
    }
  }
}

/** Highest image set id of an experiment (0 when it has none): the watcher's "were sets added?" test. */
export async function maxImageSetId(pool: Db, experimentId: number): Promise<number> {
  const rows = await pool.query<Array<{ maxId: number | null }>>('SELECT MAX(id) AS maxId FROM image_set WHERE experiment_id = ?', [experimentId]);
  return Number(rows[0]?.maxId ?? 0);
}

/** Failed and cancelled sets back to pending (`cpflow retry`); the failed count drops with them. */
export async function resetFailedImageSets(pool: Db, experimentId: number): Promise<number> {
  return inTransaction(pool, async (conn) => {
    await lockExperimentCounts(conn, experimentId);
    const before = await statusTally(conn, experimentId);
    const res = affectedSchema.parse(
      await conn.query(
        `UPDATE image_set SET status = 'pending', error = NULL WHERE experiment_id = ? AND status IN ('failed','cancelled')`,
        [experimentId],
      ),
    );
    await addToExperimentCounts(conn, experimentId, { failed: -before.failed });
    return res.affectedRows;
  });
}

/**
 * Mirror a batch of image set outcomes. Idempotent: replaying the same batch leaves the same rows.
 * A set that already reached `done` is never moved back to `running` by a late, out-of-order batch.
 */
export async function applyImageSetOutcomes(pool: Db, experimentId: number, outcomes: ImageSetOutcome[]): Promise<void> {
  if (outcomes.length === 0) return;
  const ids = [...new Set(outcomes.map((o) => o.imageSetId))];
  await inTransaction(pool, async (conn) => {
    // The experiment row first (the order every writer of its counts takes), then the sets' rows: the
    // done/failed counts move by exactly what this batch changed, measured inside the transaction. A
    // replayed batch changes nothing and so adds nothing; concurrent batches serialise on the row.
    await lockExperimentCounts(conn, experimentId);
    const before = await statusTally(conn, experimentId, ids);
    await conn.batch(
      `UPDATE image_set SET
         status = IF(? = 'running' AND status IN ('done','failed'), status, ?),
         attempts = GREATEST(attempts, ?), skipped = ?, output_prefix = COALESCE(?, output_prefix),
         error = IF(? = 'done', NULL, COALESCE(?, error)),
         started_at = COALESCE(started_at, NOW(3)),
         finished_at = IF(? IN ('done','failed','cancelled'), NOW(3), finished_at),
         summary = COALESCE(?, summary)
       WHERE id = ? AND experiment_id = ?`,
      outcomes.map((o) => [
        o.status,
        o.status,
        o.attempts,
        o.skipped ? 1 : 0,
        o.outputPrefix ?? null,
        o.status,
        o.error ?? null,
        o.status,
        o.summary ? JSON.stringify(o.summary) : null,
        o.imageSetId,
        experimentId,
      ]),
    );
    const after = await statusTally(conn, experimentId, ids);
    await addToExperimentCounts(conn, experimentId, { done: after.done - before.done, failed: after.failed - before.failed });
    const resultRows = outcomes.flatMap((o) => (o.results ?? []).map((r) => [experimentId, o.imageSetId, r.kind, r.uri, r.size, r.checksum]));
    if (resultRows.length > 0) {
      await conn.batch(
        `INSERT INTO result_file (experiment_id, image_set_id, kind, uri, size, checksum) VALUES (?, ?, ?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE size = VALUES(size), checksum = VALUES(checksum), kind = VALUES(kind)`,
        resultRows,
      );
    }
  });
}

/** Done and failed sets among `ids` (all of the experiment's when omitted), read under row locks. */
async function statusTally(conn: Conn, experimentId: number, ids?: number[]): Promise<{ done: number; failed: number }> {
  const rows = await conn.query<Array<{ done: number | bigint | null; failed: number | bigint | null }>>(
    `SELECT SUM(status = 'done') AS done, SUM(status = 'failed') AS failed FROM image_set
     WHERE experiment_id = ?${ids ? ' AND id IN (?)' : " AND status IN ('done','failed')"} FOR UPDATE`,
    ids ? [experimentId, ids] : [experimentId],
  );
  return { done: Number(rows[0]?.done ?? 0), failed: Number(rows[0]?.failed ?? 0) };
}

export async function imageSetCounts(pool: Db, experimentId: number): Promise<Record<ImageSetStatus, number> & { total: number }> {
  const rows = await pool.query<unknown[]>('SELECT status, COUNT(*) AS n FROM image_set WHERE experiment_id = ? GROUP BY status', [
    experimentId,
  ]);
  const counts = { pending: 0, running: 0, done: 0, failed: 0, cancelled: 0, total: 0 };
  for (const r of rows.map((row) => statusCountRowSchema.parse(row))) {
    counts[r.status] = r.n;
    counts.total += r.n;
  }
  return counts;
}

/**
 * The recorded summaries (SetSummary JSON) of the given sets, by id; sets without one (failed, or
 * analysed before summaries were recorded) are absent. Parsed by the caller, which falls back to the
 * set's tables when a summary does not parse.
 */
export async function imageSetSummaries(pool: Db, setIds: number[]): Promise<Map<number, unknown>> {
  const map = new Map<number, unknown>();
  if (setIds.length === 0) return map;
  const rows = await pool.query<Array<{ id: number; summary: string | null }>>(
    'SELECT id, summary FROM image_set WHERE id IN (?) AND summary IS NOT NULL',
    [setIds],
  );
  for (const r of rows) {
    if (r.summary === null) continue;
    try {
      map.set(Number(r.id), JSON.parse(r.summary));
    } catch {
      // Unreadable JSON: left out, so the reduce reads that set's tables.
    }
  }
  return map;
}
