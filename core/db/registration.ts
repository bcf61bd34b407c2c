import crypto from 'node:crypto';
import { foldName } from '../naming';
import { inTransaction, type Conn, type Db } from './pool';
import { refreshExperimentCounts } from './experiments';
import { insertImageSetsOn, type NewImageSet } from './image-sets';
import type { NewExperiment } from './experiments';
import { affectedSchema, insertSchema } from './rows';
import type { ProfilesOptions } from '../model/profiles';
import { insertProfilesOptionsOn } from './profiles';

/**
 * How `cpflow submit` registers without ever trampling another submit:
 *
 * Projects: created under one named lock, refusing a name that differs from an existing one only in
 * case, accents or separators, and a bucket another project owns (also a unique key, for writers that
 * do not take the lock).
 *
 * Experiments: register first, then upload, then commit.
 *  1. `reserveExperiment` takes a named lock for the project/name (held on its own connection for the
 *     whole submit), checks the name is free and inserts the row as `registering` (the watcher ignores
 *     it). Of several submits of one name at once exactly one gets the lock and the row; the others
 *     are told the experiment exists. A `registering` row whose submit died (its lock is free) is
 *     taken over.
 *  2. The submit uploads its inputs under `inputs/<experiment id>/`, a prefix no other experiment uses.
 *  3. `commitExperiment` inserts the image sets and flips the row to `submitted` in one transaction.
 *     On failure `abandonExperiment` deletes the row (its image sets with it).
 */

const PROJECT_REGISTRY_LOCK = 'cpflow_project_registry';
const LOCK_WAIT_SECONDS = 30;
const ER_DUP_ENTRY = 1062;

export const isDuplicateEntry = (err: unknown): boolean => (err as { errno?: number } | null)?.errno === ER_DUP_ENTRY;

export type ProjectClaim =
  | { kind: 'existing'; id: number; bucket: string }
  | { kind: 'created'; id: number; bucket: string }
  | { kind: 'similar-name'; existing: string }
  | { kind: 'bucket-taken'; owner: string };

/** Every project's name (for the similar-name check at submit: projects are few). */
export async function projectNames(pool: Db): Promise<string[]> {
  const rows = await pool.query<Array<{ name: string }>>('SELECT name FROM project ORDER BY name');
  return rows.map((r) => r.name);
}

export async function findProjectByBucket(pool: Db, bucket: string): Promise<{ id: number; name: string } | undefined> {
  const rows = await pool.query<Array<{ id: number; name: string }>>('SELECT id, name FROM project WHERE bucket = ? ORDER BY id LIMIT 1', [bucket]);
  const row = rows[0];
  return row ? { id: Number(row.id), name: String(row.name) } : undefined;
}

async function withNamedLock<T>(pool: Db, lock: string, waitSeconds: number, work: (conn: Conn) => Promise<T>): Promise<T | undefined> {
  const conn = await pool.getConnection();
  try {
    const [got] = await conn.query<Array<{ got: number | null }>>('SELECT GET_LOCK(?, ?) AS got', [lock, waitSeconds]);
    if (got?.got !== 1) return undefined;
    try {
      return await work(conn);
    } finally {
      await conn.query('SELECT RELEASE_LOCK(?)', [lock]);
    }
  } finally {
    await conn.release();
  }
}

/**
 * The project `name`, created with `bucket` when new. Refuses (without creating anything) a new
 * name too similar to an existing project's, and a bucket that another project owns.
 */
export async function claimProject(pool: Db, name: string, bucket: string): Promise<ProjectClaim> {
  const claim = await withNamedLock(pool, PROJECT_REGISTRY_LOCK, LOCK_WAIT_SECONDS, async (conn): Promise<ProjectClaim> => {
    const rows = await conn.query<Array<{ id: number; name: string; bucket: string }>>('SELECT id, name, bucket FROM project');
    const same = rows.find((r) => r.name === name);
    if (same) return { kind: 'existing', id: Number(same.id), bucket: same.bucket };
    const folded = foldName(name);
    const similar = rows.find((r) => foldName(r.name) === folded);
    if (similar) return { kind: 'similar-name', existing: similar.name };
    const owner = rows.find((r) => r.bucket === bucket);
    if (owner) return { kind: 'bucket-taken', owner: owner.name };
    try {
      const res = insertSchema.parse(await conn.query('INSERT INTO project (name, bucket, owns_bucket) VALUES (?, ?, 1)', [name, bucket]));
      return { kind: 'created', id: res.insertId, bucket };
    } catch (err) {
      // A writer that does not take the lock (a lab system) got there first.
      if (isDuplicateEntry(err)) return { kind: 'bucket-taken', owner: '(another project)' };
      throw err;
    }
  });
  if (!claim) throw new Error(`timed out after ${LOCK_WAIT_SECONDS} s waiting for the project registry lock`);
  return claim;
}

/** The named lock of one project/name: MariaDB lock names hold at most 64 characters. */
const registrationLock = (projectId: number, name: string): string =>
  `cpflow_register_${projectId}_${crypto.createHash('sha256').update(name, 'utf8').digest('hex').slice(0, 32)}`;

export interface Reservation {
  experimentId: number;
  /** A stale `registering` row of a dead submit that was deleted to make room: its uploads may be cleaned. */
  replacedExperimentId?: number;
  /** Ends the reservation's lock (after commit or abandon). */
  release: () => Promise<void>;
}

export type ReservationResult = { kind: 'reserved'; reservation: Reservation } | { kind: 'exists'; id?: number; status?: string; busy?: boolean };

/**
 * Step 1: reserve project/name. `inputPrefixFor(id)` gives the experiment's input prefix, which
 * depends on the id the insert assigns.
 */
export async function reserveExperiment(
  pool: Db,
  e: Omit<NewExperiment, 'inputPrefix'>,
  inputPrefixFor: (experimentId: number) => string,
): Promise<ReservationResult> {
  const lock = registrationLock(e.projectId, e.name);
  const conn = await pool.getConnection();
  let held = false;
  const release = async (): Promise<void> => {
    try {
      if (held) await conn.query('SELECT RELEASE_LOCK(?)', [lock]).catch(() => undefined);
      held = false;
    } finally {
      await conn.release().catch(() => undefined);
    }
  };
  try {
    const [got] = await conn.query<Array<{ got: number | null }>>('SELECT GET_LOCK(?, 0) AS got', [lock]);
    if (got?.got !== 1) {
      await release();
      return { kind: 'exists', busy: true };
    }
    held = true;
    const [existing] = await conn.query<Array<{ id: number; status: string }>>(
      'SELECT id, status FROM experiment WHERE project_id = ? AND name = ?',
      [e.projectId, e.name],
    );
    let replacedExperimentId: number | undefined;
    if (existing && existing.status === 'registering') {
      // We hold its lock, so the submit that reserved it is gone: take the name over.
      await conn.query(`DELETE FROM experiment WHERE id = ? AND status = 'registering'`, [existing.id]);
      replacedExperimentId = Number(existing.id);
    } else if (existing) {
      await release();
      return { kind: 'exists', id: Number(existing.id), status: existing.status };
    }
    let experimentId: number;
    try {
      const res = insertSchema.parse(
        await conn.query(
          `INSERT INTO experiment (project_id, name, pipeline_uri, pipeline_sha256, engine, engine_options, dispatch_options,
             stages, input_prefix, grouping_rule, sealed, max_failed_fraction, warnings, status, total_sets)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, '', ?, ?, ?, ?, 'registering', 0)`,
          [
            e.projectId,
            e.name,
            e.pipelineUri,
            e.pipelineSha256,
            e.engine,
            JSON.stringify(e.engineOptions),
            JSON.stringify(e.dispatch),
            e.stages ? JSON.stringify(e.stages) : null,
            JSON.stringify(e.groupingRule),
            e.sealed ? 1 : 0,
            e.maxFailedFraction,
            e.warnings && e.warnings.length > 0 ? JSON.stringify(e.warnings) : null,
          ],
        ),
      );
      experimentId = res.insertId;
    } catch (err) {
      // A writer that does not take the lock (a lab system) registered the name meanwhile.
      if (isDuplicateEntry(err)) {
        await release();
        return { kind: 'exists' };
      }
      throw err;
    }
    await conn.query('UPDATE experiment SET input_prefix = ? WHERE id = ?', [inputPrefixFor(experimentId), experimentId]);
    return { kind: 'reserved', reservation: { experimentId, replacedExperimentId, release } };
  } catch (err) {
    await release();
    throw err;
  }
}

/** Step 3: the image sets and the switch to `submitted`, in one transaction. */
export async function commitExperiment(pool: Db, experimentId: number, sets: NewImageSet[], profiles?: ProfilesOptions): Promise<void> {
  await inTransaction(pool, async (conn) => {
    await insertImageSetsOn(conn, experimentId, sets, 'new-only');
    // Submitted with a platemap: the profiles step's settings (experiment_profiles), in the same transaction.
    if (profiles) await insertProfilesOptionsOn(conn, experimentId, profiles);
    const res = affectedSchema.parse(
      await conn.query(`UPDATE experiment SET status = 'submitted', total_sets = ? WHERE id = ? AND status = 'registering'`, [sets.length, experimentId]),
    );
    if (res.affectedRows !== 1) {
      throw new Error(`experiment ${experimentId}: its reservation was lost while uploading (the MariaDB connection dropped); submit again`);
    }
  });
}

/** A failed submit leaves no row behind. */
export async function abandonExperiment(pool: Db, experimentId: number): Promise<void> {
  await pool.query(`DELETE FROM experiment WHERE id = ? AND status = 'registering'`, [experimentId]);
}

/** Keys among `keys` already registered in the experiment. */
export async function existingSetKeys(pool: Db, experimentId: number, keys: string[]): Promise<string[]> {
  const found: string[] = [];
  for (let i = 0; i < keys.length; i += 1000) {
    const page = keys.slice(i, i + 1000);
    const rows = await pool.query<Array<{ set_key: string }>>('SELECT set_key FROM image_set WHERE experiment_id = ? AND set_key IN (?)', [experimentId, page]);
    found.push(...rows.map((r) => r.set_key));
  }
  return found.sort();
}

/**
 * `submit --append`: add new image sets to an open experiment in one transaction. A set key already
 * registered fails it (ER_DUP_ENTRY) rather than repointing that set at other files; so does a seal
 * that happened meanwhile.
 */
export async function appendImageSets(pool: Db, experimentId: number, sets: NewImageSet[]): Promise<void> {
  await inTransaction(pool, async (conn) => {
    const [row] = await conn.query<Array<{ sealed: number }>>('SELECT sealed FROM experiment WHERE id = ? FOR UPDATE', [experimentId]);
    if (!row) throw new Error(`experiment ${experimentId} vanished while appending`);
    if (Number(row.sealed) === 1) throw new Error(`experiment ${experimentId} was sealed while appending; no image sets were added`);
    await insertImageSetsOn(conn, experimentId, sets, 'new-only');
  });
  await refreshExperimentCounts(pool, experimentId);
}
