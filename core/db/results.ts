import type { ResultFileRecord } from '../model/domain';
import type { Db } from './pool';
import { resultFileRowSchema, type ResultFileRow } from './rows';

/** result_file: what an experiment produced, per image set and for the experiment as a whole. */

export async function upsertExperimentResult(pool: Db, experimentId: number, r: ResultFileRecord): Promise<void> {
  await pool.query(
    `INSERT INTO result_file (experiment_id, image_set_id, kind, uri, size, checksum) VALUES (?, NULL, ?, ?, ?, ?)
     ON DUPLICATE KEY UPDATE size = VALUES(size), checksum = VALUES(checksum), kind = VALUES(kind)`,
    [experimentId, r.kind, r.uri, r.size, r.checksum],
  );
}

/** The experiment-level results (summary, report, provenance), by kind. */
export async function experimentResults(pool: Db, experimentId: number): Promise<ResultFileRow[]> {
  const rows = await pool.query<unknown[]>(
    'SELECT image_set_id, kind, uri, size FROM result_file WHERE experiment_id = ? AND image_set_id IS NULL ORDER BY kind',
    [experimentId],
  );
  return rows.map((r) => resultFileRowSchema.parse(r));
}

/** URIs of the tables (`table:*` results) of the given image sets, grouped by set, in URI order. */
export async function tableUrisBySet(pool: Db, setIds: number[]): Promise<Map<number, string[]>> {
  const map = new Map<number, string[]>();
  if (setIds.length === 0) return map;
  const rows = await pool.query<unknown[]>(
    `SELECT image_set_id, kind, uri, size FROM result_file WHERE image_set_id IN (?) AND kind LIKE 'table:%' ORDER BY uri`,
    [setIds],
  );
  for (const r of rows.map((row) => resultFileRowSchema.parse(row))) {
    if (r.image_set_id === null) continue;
    map.set(r.image_set_id, [...(map.get(r.image_set_id) ?? []), r.uri]);
  }
  return map;
}
