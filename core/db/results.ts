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

/** Whether any image set of this stage recorded a table (a stage whose pipeline exports none has only files). */
export async function stageHasTables(pool: Db, experimentId: number, stage: string): Promise<boolean> {
  const rows = await pool.query<unknown[]>(
    `SELECT 1 FROM result_file r JOIN image_set s ON s.id = r.image_set_id
     WHERE r.experiment_id = ? AND s.stage = ? AND r.kind LIKE 'table:%' LIMIT 1`,
    [experimentId, stage],
  );
  return rows.length > 0;
}

/** Every result of the experiment's image sets (tables, files, provenance), with the set's stage and key. */
export async function setResultFiles(
  pool: Db,
  experimentId: number,
): Promise<Array<{ stage: string; setKey: string; kind: string; uri: string; size: number }>> {
  const rows = await pool.query<Array<{ stage: string; set_key: string; kind: string; uri: string; size: number }>>(
    `SELECT s.stage, s.set_key, r.kind, r.uri, r.size FROM result_file r JOIN image_set s ON s.id = r.image_set_id
     WHERE r.experiment_id = ? ORDER BY s.stage, s.set_key, r.uri`,
    [experimentId],
  );
  return rows.map((r) => ({ stage: String(r.stage), setKey: String(r.set_key), kind: String(r.kind), uri: String(r.uri), size: Number(r.size) }));
}
