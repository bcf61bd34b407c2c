import type { DispatchOptions, EngineName, EngineOptions, ExperimentStatus, GroupingRule } from '../model/domain';
import type { ProfilesOptions } from '../model/profiles';
import { isTerminal } from '../model/domain';
import { SINGLE_STAGE, type StageSpec } from '../model/stages';
import { inTransaction, type Conn, type Db } from './pool';
import { insertImageSetsOn, type NewImageSet } from './image-sets';
import { insertProfilesOptionsOn } from './profiles';
import {
  activeExperimentRowSchema,
  affectedSchema,
  experimentRowSchema,
  idRowSchema,
  insertSchema,
  projectRowSchema,
  type ActiveExperimentRow,
  type ExperimentRow,
  type ProjectRow,
} from './rows';

/** Projects and experiments: registration, lookups, the watcher's claim, status and counts. */

/** For lab systems and tests; `cpflow submit` creates projects through createProject (registration.ts). */
export async function upsertProject(pool: Db, name: string, bucket: string): Promise<number> {
  await pool.query('INSERT INTO project (name, bucket, owns_bucket) VALUES (?, ?, 1) ON DUPLICATE KEY UPDATE id = id', [name, bucket]);
  const row = await findProject(pool, name);
  if (!row) throw new Error(`project ${name} vanished after upsert`);
  return row.id;
}

export async function findProject(pool: Db, name: string): Promise<ProjectRow | undefined> {
  const rows = await pool.query<unknown[]>('SELECT id, bucket FROM project WHERE name = ?', [name]);
  return rows[0] === undefined ? undefined : projectRowSchema.parse(rows[0]);
}

export interface NewExperiment {
  projectId: number;
  name: string;
  pipelineUri: string | null;
  pipelineSha256: string | null;
  engine: EngineName;
  engineOptions: EngineOptions;
  dispatch: DispatchOptions;
  inputPrefix: string;
  groupingRule: GroupingRule;
  sealed: boolean;
  maxFailedFraction: number;
  /** Submitted with a platemap: the profiles step's settings (experiment_profiles). */
  profiles?: ProfilesOptions;
  /** Stages in run order; null for a plain experiment (one stage, `pipelineUri`, no groups). */
  stages?: StageSpec[] | null;
  /** What `submit` and CellProfiler said about the pipelines; shown by `cpflow status`. */
  warnings?: string[];
}

/** The experiment's stages in run order; a plain experiment is one stage named SINGLE_STAGE. */
export function stagesOf(e: Pick<ExperimentRow, 'stages' | 'pipeline_uri' | 'pipeline_sha256'>): StageSpec[] {
  if (e.stages && e.stages.length > 0) return e.stages;
  return [{ name: SINGLE_STAGE, pipelineUri: e.pipeline_uri, pipelineSha256: e.pipeline_sha256, groupBy: [], input: 'files', inputs: [] }];
}

const EXPERIMENT_SELECT = `SELECT e.*, p.name AS project_name, p.bucket AS bucket
  FROM experiment e JOIN project p ON p.id = e.project_id`;

export async function getExperiment(pool: Db, id: number): Promise<ExperimentRow | undefined> {
  const rows = await pool.query<unknown[]>(`${EXPERIMENT_SELECT} WHERE e.id = ?`, [id]);
  return rows[0] === undefined ? undefined : experimentRowSchema.parse(rows[0]);
}

export async function findExperimentByName(pool: Db, project: string, name: string): Promise<ExperimentRow | undefined> {
  const rows = await pool.query<unknown[]>(`${EXPERIMENT_SELECT} WHERE p.name = ? AND e.name = ?`, [project, name]);
  return rows[0] === undefined ? undefined : experimentRowSchema.parse(rows[0]);
}

export async function listExperiments(
  pool: Db,
  filter: { project?: string; status?: ExperimentStatus; limit?: number } = {},
): Promise<ExperimentRow[]> {
  const where: string[] = [];
  const params: unknown[] = [];
  if (filter.project) {
    where.push('p.name = ?');
    params.push(filter.project);
  }
  if (filter.status) {
    where.push('e.status = ?');
    params.push(filter.status);
  }
  params.push(filter.limit ?? 100);
  const rows = await pool.query<unknown[]>(
    `${EXPERIMENT_SELECT} ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY e.id DESC LIMIT ?`,
    params,
  );
  return rows.map((r) => experimentRowSchema.parse(r));
}

/**
 * Register an experiment and all its image sets in ONE transaction: the watcher never sees a
 * submitted experiment whose sets are still being written, and a failed submit leaves nothing behind.
 */
export async function registerExperiment(pool: Db, e: NewExperiment, sets: NewImageSet[]): Promise<number> {
  return inTransaction(pool, async (conn) => {
    const res = insertSchema.parse(
      await conn.query(
        `INSERT INTO experiment (project_id, name, pipeline_uri, pipeline_sha256, engine, engine_options, dispatch_options,
           stages, input_prefix, grouping_rule, sealed, max_failed_fraction, warnings, status, total_sets)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'submitted', ?)`,
        [
          e.projectId,
          e.name,
          e.pipelineUri,
          e.pipelineSha256,
          e.engine,
          JSON.stringify(e.engineOptions),
          JSON.stringify(e.dispatch),
          e.stages ? JSON.stringify(e.stages) : null,
          e.inputPrefix,
          JSON.stringify(e.groupingRule),
          e.sealed ? 1 : 0,
          e.maxFailedFraction,
          e.warnings && e.warnings.length > 0 ? JSON.stringify(e.warnings) : null,
          sets.length,
        ],
      ),
    );
    await insertImageSetsOn(conn, res.insertId, sets);
    if (e.profiles) await insertProfilesOptionsOn(conn, res.insertId, e.profiles);
    return res.insertId;
  });
}

/**
 * Atomically claim a submitted experiment for starting. Only one watcher's UPDATE matches the
 * `status = 'submitted'` row, so racing watchers never both start it.
 */
export async function claimSubmittedExperiment(pool: Db, id: number, workflowId: string): Promise<boolean> {
  const res = affectedSchema.parse(
    await pool.query(
      `UPDATE experiment SET status = 'running', workflow_id = ?, started_at = COALESCE(started_at, NOW(3)),
         claimed_at = NOW(3), error = NULL
       WHERE id = ? AND status = 'submitted'`,
      [workflowId, id],
    ),
  );
  return res.affectedRows === 1;
}

export async function releaseClaim(pool: Db, id: number, error: string): Promise<void> {
  await pool.query(`UPDATE experiment SET status = 'submitted', error = ? WHERE id = ? AND status = 'running'`, [error, id]);
}

/** An ended experiment goes back to `submitted`, so a watcher starts a new run over its pending sets. */
export async function resubmitExperiment(pool: Db, id: number): Promise<void> {
  await pool.query(`UPDATE experiment SET status = 'submitted', error = NULL, finished_at = NULL WHERE id = ?`, [id]);
}

export async function submittedExperimentIds(pool: Db, limit = 50): Promise<number[]> {
  const rows = await pool.query<unknown[]>(`SELECT id FROM experiment WHERE status = 'submitted' ORDER BY id LIMIT ?`, [limit]);
  return rows.map((r) => idRowSchema.parse(r).id);
}

/** Experiments the database says are in progress: the watcher checks each still has a workflow. */
export async function activeExperiments(pool: Db): Promise<ActiveExperimentRow[]> {
  const rows = await pool.query<unknown[]>(
    `SELECT id, workflow_id, sealed, claimed_at FROM experiment WHERE status IN ('running','reducing') ORDER BY id`,
  );
  return rows.map((r) => activeExperimentRowSchema.parse(r));
}

export async function setExperimentSealed(pool: Db, id: number): Promise<void> {
  await pool.query('UPDATE experiment SET sealed = 1 WHERE id = ?', [id]);
}

export async function setExperimentStatus(
  pool: Db,
  id: number,
  status: ExperimentStatus,
  extra: { error?: string | null; summaryUri?: string; reportUri?: string } = {},
): Promise<void> {
  await pool.query(
    `UPDATE experiment SET status = ?, error = COALESCE(?, error), summary_uri = COALESCE(?, summary_uri),
       report_uri = COALESCE(?, report_uri), finished_at = ${isTerminal(status) ? 'NOW(3)' : 'NULL'}
     WHERE id = ?`,
    [status, extra.error ?? null, extra.summaryUri ?? null, extra.reportUri ?? null, id],
  );
}

/**
 * Recount the mirror's totals from the image_set rows. Idempotent, and O(sets of the experiment):
 * called when an experiment changes status (a few times per run) to reconcile; per sync batch the
 * counts move incrementally instead (applyImageSetOutcomes), which stays cheap at 100,000 sets.
 */
export async function refreshExperimentCounts(pool: Db, id: number): Promise<void> {
  await inTransaction(pool, async (conn) => {
    await lockExperimentCounts(conn, id);
    await conn.query(
      `UPDATE experiment e SET
         total_sets  = (SELECT COUNT(*) FROM image_set s WHERE s.experiment_id = e.id),
         done_sets   = (SELECT COUNT(*) FROM image_set s WHERE s.experiment_id = e.id AND s.status = 'done'),
         failed_sets = (SELECT COUNT(*) FROM image_set s WHERE s.experiment_id = e.id AND s.status = 'failed')
       WHERE e.id = ?`,
      [id],
    );
  });
}

/**
 * Lock the experiment's row for the rest of the transaction. Every writer of its counts takes this
 * lock before touching image_set rows, so concurrent sync batches, appends and recounts serialise
 * instead of deadlocking or losing an increment.
 */
export async function lockExperimentCounts(conn: Conn, id: number): Promise<void> {
  await conn.query('SELECT id FROM experiment WHERE id = ? FOR UPDATE', [id]);
}

/** Move the stored counts by the given deltas (never below zero), inside the caller's transaction. */
export async function addToExperimentCounts(conn: Conn, id: number, delta: { total?: number; done?: number; failed?: number }): Promise<void> {
  const total = delta.total ?? 0;
  const done = delta.done ?? 0;
  const failed = delta.failed ?? 0;
  if (total === 0 && done === 0 && failed === 0) return;
  await conn.query(
    `UPDATE experiment SET
       total_sets  = GREATEST(CAST(total_sets AS SIGNED) + ?, 0),
       done_sets   = GREATEST(CAST(done_sets AS SIGNED) + ?, 0),
       failed_sets = GREATEST(CAST(failed_sets AS SIGNED) + ?, 0)
     WHERE id = ?`,
    [total, done, failed, id],
  );
}
