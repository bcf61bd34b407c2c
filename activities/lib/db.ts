import fs from 'node:fs';
import path from 'node:path';
import * as mariadb from 'mariadb';
import { z } from 'zod';
import { dbConfig, type DbConfig } from './config';

/**
 * MariaDB access: one pool per process, versioned migrations applied on first use, parameterised
 * queries only, and rows validated with zod as they cross into the program.
 */

export type Db = mariadb.Pool;

const MIGRATIONS_DIR = path.join(__dirname, '..', 'migrations');
const MIGRATION_LOCK = 'cpflow_schema_migration';

let sharedPool: { pool: Db; ready: Promise<void> } | undefined;

export class DatabaseUnavailableError extends Error {
  constructor(where: string, cause: unknown) {
    super(`MariaDB unreachable at ${where}: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = 'DatabaseUnavailableError';
  }
}

export function createPool(config: DbConfig = dbConfig()): Db {
  return mariadb.createPool({
    host: config.CPFLOW_DB_HOST,
    port: config.CPFLOW_DB_PORT,
    user: config.CPFLOW_DB_USER,
    password: config.CPFLOW_DB_PASSWORD,
    database: config.CPFLOW_DB_NAME,
    connectionLimit: config.CPFLOW_DB_POOL_SIZE,
    acquireTimeout: 10_000,
    connectTimeout: 5_000,
    bigIntAsNumber: true,
    insertIdAsNumber: true,
    decimalAsNumber: true,
    // JSON columns arrive as strings on MariaDB (JSON is LONGTEXT there); rows are parsed by zod below.
    autoJsonMap: false,
  });
}

/** The process-wide pool, migrated. Callers never close it; `closeDb` is for tests and shutdown. */
export async function db(): Promise<Db> {
  if (!sharedPool) {
    const config = dbConfig();
    const pool = createPool(config);
    const ready = migrate(pool).then(
      () => undefined,
      (err: unknown) => {
      sharedPool = undefined;
      void pool.end().catch(() => undefined);
      throw new DatabaseUnavailableError(`${config.CPFLOW_DB_HOST}:${config.CPFLOW_DB_PORT}`, err);
      },
    );
    sharedPool = { pool, ready };
  }
  const current = sharedPool;
  await current.ready;
  return current.pool;
}

export async function closeDb(): Promise<void> {
  const current = sharedPool;
  sharedPool = undefined;
  if (current) await current.pool.end();
}

interface Migration {
  version: number;
  name: string;
  sql: string;
}

export function loadMigrations(dir = MIGRATIONS_DIR): Migration[] {
  return fs
    .readdirSync(dir)
    .filter((f) => /^\d+_.+\.sql$/.test(f))
    .map((file) => ({
      version: Number(file.split('_')[0]),
      name: file,
      sql: fs.readFileSync(path.join(dir, file), 'utf8'),
    }))
    .sort((a, b) => a.version - b.version);
}

/** Split a migration into statements (our migrations contain no procedures, so `;` at line end is enough). */
function statements(sql: string): string[] {
  return sql
    .split(/;\s*$/m)
    .map((s) => s.replace(/^\s*--.*$/gm, '').trim())
    .filter((s) => s.length > 0);
}

/**
 * Apply pending migrations under a named lock so several workers starting at once migrate exactly once.
 * MariaDB commits DDL implicitly, so each migration is recorded right after its statements run.
 */
export async function migrate(pool: Db): Promise<number[]> {
  const conn = await pool.getConnection();
  try {
    const [lock] = await conn.query<Array<{ got: number | null }>>('SELECT GET_LOCK(?, 60) AS got', [MIGRATION_LOCK]);
    if (lock?.got !== 1) throw new Error('timed out waiting for the schema migration lock');
    try {
      await conn.query(
        `CREATE TABLE IF NOT EXISTS schema_migration (
           version INT NOT NULL PRIMARY KEY, name VARCHAR(200) NOT NULL,
           applied_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)) ENGINE=InnoDB`,
      );
      const appliedRows = await conn.query<Array<{ version: number }>>('SELECT version FROM schema_migration');
      const applied = new Set(appliedRows.map((r) => Number(r.version)));
      const newlyApplied: number[] = [];
      for (const m of loadMigrations()) {
        if (applied.has(m.version)) continue;
        for (const stmt of statements(m.sql)) await conn.query(stmt);
        await conn.query('INSERT INTO schema_migration (version, name) VALUES (?, ?)', [m.version, m.name]);
        newlyApplied.push(m.version);
      }
      return newlyApplied;
    } finally {
      await conn.query('SELECT RELEASE_LOCK(?)', [MIGRATION_LOCK]);
    }
  } finally {
    await conn.release();
  }
}

// ---------------------------------------------------------------------------------------------
// Row schemas

const jsonColumn = <T extends z.ZodTypeAny>(schema: T) =>
  z.preprocess((v) => (typeof v === 'string' ? JSON.parse(v) : v), schema);

const dateOrNull = z.union([z.date(), z.null()]);

export const EXPERIMENT_STATUSES = [
  'submitted',
  'running',
  'reducing',
  'done',
  'done_with_failures',
  'failed',
  'cancelled',
] as const;
export type ExperimentStatus = (typeof EXPERIMENT_STATUSES)[number];
export const TERMINAL_STATUSES: readonly ExperimentStatus[] = ['done', 'done_with_failures', 'failed', 'cancelled'];

export const IMAGE_SET_STATUSES = ['pending', 'running', 'done', 'failed', 'cancelled'] as const;
export type ImageSetStatus = (typeof IMAGE_SET_STATUSES)[number];

export const groupingRuleSchema = z.object({
  /** Regular expression with named groups; `Channel` (or the group named by `channelGroup`) picks the channel. */
  pattern: z.string().min(1),
  channelGroup: z.string().default('Channel'),
  /** Maps raw channel values from file names to pipeline channel names (e.g. `d0` → `DNA`). */
  channelMap: z.record(z.string(), z.string()).default({}),
  /** Set key template over the named groups, e.g. `{Plate}-{Well}-s{Site}`; default joins them with `-`. */
  keyTemplate: z.string().optional(),
  preset: z.string().optional(),
});
export type GroupingRule = z.infer<typeof groupingRuleSchema>;

export const engineOptionsSchema = z
  .object({
    nucleiChannel: z.string().optional(),
    minDiameter: z.number().positive().optional(),
    maxDiameter: z.number().positive().optional(),
    /** Image sets per engine invocation (amortises CellProfiler's start-up). */
    batchSize: z.number().int().min(1).max(64).default(1),
  })
  .default({ batchSize: 1 });
export type EngineOptions = z.infer<typeof engineOptionsSchema>;

export const experimentRowSchema = z.object({
  id: z.number().int(),
  project_id: z.number().int(),
  project_name: z.string(),
  bucket: z.string(),
  name: z.string(),
  pipeline_uri: z.string().nullable(),
  pipeline_sha256: z.string().nullable(),
  engine: z.enum(['cellprofiler', 'builtin', 'command']),
  engine_options: jsonColumn(engineOptionsSchema.nullable()).transform((v) => v ?? { batchSize: 1 }),
  input_prefix: z.string(),
  grouping_rule: jsonColumn(groupingRuleSchema),
  status: z.enum(EXPERIMENT_STATUSES),
  sealed: z.coerce.boolean(),
  max_failed_fraction: z.number(),
  workflow_id: z.string().nullable(),
  total_sets: z.number().int(),
  done_sets: z.number().int(),
  failed_sets: z.number().int(),
  summary_uri: z.string().nullable(),
  report_uri: z.string().nullable(),
  error: z.string().nullable(),
  created_at: z.date(),
  updated_at: z.date(),
  started_at: dateOrNull,
  claimed_at: dateOrNull.optional(),
  finished_at: dateOrNull,
});
export type ExperimentRow = z.infer<typeof experimentRowSchema>;

const EXPERIMENT_SELECT = `SELECT e.*, p.name AS project_name, p.bucket AS bucket
  FROM experiment e JOIN project p ON p.id = e.project_id`;

export const imageSetRowSchema = z.object({
  id: z.number().int(),
  experiment_id: z.number().int(),
  set_key: z.string(),
  metadata: jsonColumn(z.record(z.string(), z.string())),
  status: z.enum(IMAGE_SET_STATUSES),
  attempts: z.number().int(),
  skipped: z.coerce.boolean(),
  output_prefix: z.string().nullable(),
  error: z.string().nullable(),
});
export type ImageSetRow = z.infer<typeof imageSetRowSchema>;

export const imageFileRowSchema = z.object({
  image_set_id: z.number().int(),
  channel: z.string(),
  uri: z.string(),
  size: z.number().int(),
  checksum: z.string(),
});
export type ImageFileRow = z.infer<typeof imageFileRowSchema>;

// ---------------------------------------------------------------------------------------------
// Projects and experiments

export async function upsertProject(pool: Db, name: string, bucket: string): Promise<number> {
  await pool.query('INSERT INTO project (name, bucket) VALUES (?, ?) ON DUPLICATE KEY UPDATE id = id', [name, bucket]);
  const rows = await pool.query<Array<{ id: number; bucket: string }>>('SELECT id, bucket FROM project WHERE name = ?', [
    name,
  ]);
  const row = rows[0];
  if (!row) throw new Error(`project ${name} vanished after upsert`);
  return row.id;
}

export async function findProject(pool: Db, name: string): Promise<{ id: number; bucket: string } | undefined> {
  const rows = await pool.query<Array<{ id: number; bucket: string }>>('SELECT id, bucket FROM project WHERE name = ?', [
    name,
  ]);
  return rows[0];
}

export interface NewExperiment {
  projectId: number;
  name: string;
  pipelineUri: string | null;
  pipelineSha256: string | null;
  engine: ExperimentRow['engine'];
  engineOptions: EngineOptions;
  inputPrefix: string;
  groupingRule: GroupingRule;
  sealed: boolean;
  maxFailedFraction: number;
}

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
 * Atomically claim a submitted experiment for starting. Only one watcher's UPDATE matches the
 * `status = 'submitted'` row, so racing watchers never both start it.
 */
export async function claimSubmittedExperiment(pool: Db, id: number, workflowId: string): Promise<boolean> {
  const res = await pool.query<{ affectedRows: number }>(
    `UPDATE experiment SET status = 'running', workflow_id = ?, started_at = COALESCE(started_at, NOW(3)),
       claimed_at = NOW(3), error = NULL
     WHERE id = ? AND status = 'submitted'`,
    [workflowId, id],
  );
  return res.affectedRows === 1;
}

export async function releaseClaim(pool: Db, id: number, error: string): Promise<void> {
  await pool.query(`UPDATE experiment SET status = 'submitted', error = ? WHERE id = ? AND status = 'running'`, [
    error,
    id,
  ]);
}

export async function submittedExperimentIds(pool: Db, limit = 50): Promise<number[]> {
  const rows = await pool.query<Array<{ id: number }>>(
    `SELECT id FROM experiment WHERE status = 'submitted' ORDER BY id LIMIT ?`,
    [limit],
  );
  return rows.map((r) => r.id);
}

/** Experiments the database says are in progress: the watcher checks each still has a workflow. */
export async function activeExperiments(
  pool: Db,
): Promise<Array<{ id: number; workflow_id: string | null; sealed: boolean; claimed_at: Date | null }>> {
  const rows = await pool.query<Array<{ id: number; workflow_id: string | null; sealed: number; claimed_at: Date | null }>>(
    `SELECT id, workflow_id, sealed, claimed_at FROM experiment WHERE status IN ('running','reducing') ORDER BY id`,
  );
  return rows.map((r) => ({ id: r.id, workflow_id: r.workflow_id, sealed: r.sealed === 1, claimed_at: r.claimed_at }));
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
  const terminal = TERMINAL_STATUSES.includes(status);
  await pool.query(
    `UPDATE experiment SET status = ?, error = COALESCE(?, error), summary_uri = COALESCE(?, summary_uri),
       report_uri = COALESCE(?, report_uri), finished_at = ${terminal ? 'NOW(3)' : 'NULL'}
     WHERE id = ?`,
    [status, extra.error ?? null, extra.summaryUri ?? null, extra.reportUri ?? null, id],
  );
}

/** Recount the mirror's totals from the image_set rows (idempotent; cheap through ix_image_set_status). */
export async function refreshExperimentCounts(pool: Db, id: number): Promise<void> {
  await pool.query(
    `UPDATE experiment e SET
       total_sets  = (SELECT COUNT(*) FROM image_set s WHERE s.experiment_id = e.id),
       done_sets   = (SELECT COUNT(*) FROM image_set s WHERE s.experiment_id = e.id AND s.status = 'done'),
       failed_sets = (SELECT COUNT(*) FROM image_set s WHERE s.experiment_id = e.id AND s.status = 'failed')
     WHERE e.id = ?`,
    [id],
  );
}

// ---------------------------------------------------------------------------------------------
// Image sets

export interface NewImageSet {
  key: string;
  metadata: Record<string, string>;
  files: Array<{ channel: string; uri: string; size: number; checksum: string }>;
}

type Conn = mariadb.PoolConnection;

async function insertSetsOn(conn: Conn, experimentId: number, sets: NewImageSet[], batch = 500): Promise<void> {
  for (let i = 0; i < sets.length; i += batch) {
    const chunk = sets.slice(i, i + batch);
    await conn.batch(
      `INSERT INTO image_set (experiment_id, set_key, metadata) VALUES (?, ?, ?)
       ON DUPLICATE KEY UPDATE metadata = VALUES(metadata)`,
      chunk.map((s) => [experimentId, s.key, JSON.stringify(s.metadata)]),
    );
    const ids = await conn.query<Array<{ id: number; set_key: string }>>(
      `SELECT id, set_key FROM image_set WHERE experiment_id = ? AND set_key IN (?)`,
      [experimentId, chunk.map((s) => s.key)],
    );
    const idByKey = new Map(ids.map((r) => [r.set_key, r.id]));
    const fileRows = chunk.flatMap((s) => s.files.map((f) => [idByKey.get(s.key), f.channel, f.uri, f.size, f.checksum]));
    if (fileRows.length > 0) {
      await conn.batch(
        `INSERT INTO image_file (image_set_id, channel, uri, size, checksum) VALUES (?, ?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE uri = VALUES(uri), size = VALUES(size), checksum = VALUES(checksum)`,
        fileRows,
      );
    }
  }
}

async function inTransaction<T>(pool: Db, work: (conn: Conn) => Promise<T>): Promise<T> {
  const conn = await pool.getConnection();
  try {
    await conn.beginTransaction();
    const result = await work(conn);
    await conn.commit();
    return result;
  } catch (err) {
    await conn.rollback().catch(() => undefined);
    throw err;
  } finally {
    await conn.release();
  }
}

/** Add image sets (and their files) to an experiment; re-registering the same set is a no-op upsert. */
export async function upsertImageSets(pool: Db, experimentId: number, sets: NewImageSet[]): Promise<number> {
  await inTransaction(pool, (conn) => insertSetsOn(conn, experimentId, sets));
  await refreshExperimentCounts(pool, experimentId);
  return sets.length;
}

/**
 * Register an experiment and all its image sets in ONE transaction: the watcher never sees a
 * submitted experiment whose sets are still being written, and a failed submit leaves nothing behind.
 */
export async function registerExperiment(pool: Db, e: NewExperiment, sets: NewImageSet[]): Promise<number> {
  const id = await inTransaction(pool, async (conn) => {
    const res = await conn.query<{ insertId: number }>(
      `INSERT INTO experiment (project_id, name, pipeline_uri, pipeline_sha256, engine, engine_options, input_prefix,
         grouping_rule, sealed, max_failed_fraction, status, total_sets)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'submitted', ?)`,
      [
        e.projectId,
        e.name,
        e.pipelineUri,
        e.pipelineSha256,
        e.engine,
        JSON.stringify(e.engineOptions),
        e.inputPrefix,
        JSON.stringify(e.groupingRule),
        e.sealed ? 1 : 0,
        e.maxFailedFraction,
        sets.length,
      ],
    );
    const experimentId = Number(res.insertId);
    await insertSetsOn(conn, experimentId, sets);
    return experimentId;
  });
  return id;
}

/** A page of sets still to run, in id order after `afterId` (the workflow's cursor). */
export async function pendingImageSets(
  pool: Db,
  experimentId: number,
  afterId: number,
  limit: number,
): Promise<Array<ImageSetRow & { files: ImageFileRow[] }>> {
  const rows = await pool.query<unknown[]>(
    `SELECT id, experiment_id, set_key, metadata, status, attempts, skipped, output_prefix, error
     FROM image_set WHERE experiment_id = ? AND id > ? AND status IN ('pending','running') ORDER BY id LIMIT ?`,
    [experimentId, afterId, limit],
  );
  const sets = rows.map((r) => imageSetRowSchema.parse(r));
  if (sets.length === 0) return [];
  const fileRows = await pool.query<unknown[]>(
    `SELECT image_set_id, channel, uri, size, checksum FROM image_file WHERE image_set_id IN (?) ORDER BY channel`,
    [sets.map((s) => s.id)],
  );
  const files = fileRows.map((r) => imageFileRowSchema.parse(r));
  const bySet = new Map<number, ImageFileRow[]>();
  for (const f of files) bySet.set(f.image_set_id, [...(bySet.get(f.image_set_id) ?? []), f]);
  return sets.map((s) => ({ ...s, files: bySet.get(s.id) ?? [] }));
}

/** Every set of an experiment, in id order, one page at a time (bounded memory at 100,000 sets). */
export async function* allImageSets(pool: Db, experimentId: number, pageSize = 1000): AsyncGenerator<ImageSetRow> {
  let afterId = 0;
  for (;;) {
    const rows = await pool.query<unknown[]>(
      `SELECT id, experiment_id, set_key, metadata, status, attempts, skipped, output_prefix, error
       FROM image_set WHERE experiment_id = ? AND id > ? ORDER BY id LIMIT ?`,
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

export async function resetFailedImageSets(pool: Db, experimentId: number): Promise<number> {
  const res = await pool.query<{ affectedRows: number }>(
    `UPDATE image_set SET status = 'pending', error = NULL WHERE experiment_id = ? AND status IN ('failed','cancelled')`,
    [experimentId],
  );
  return res.affectedRows;
}

export interface ImageSetOutcome {
  imageSetId: number;
  status: 'running' | 'done' | 'failed' | 'cancelled';
  attempts: number;
  skipped?: boolean;
  outputPrefix?: string;
  error?: string;
  results?: Array<{ kind: string; uri: string; size: number; checksum: string }>;
}

/**
 * Mirror a batch of image set outcomes. Idempotent: replaying the same batch leaves the same rows.
 * A set that already reached `done` is never moved back to `running` by a late, out-of-order batch.
 */
export async function applyImageSetOutcomes(pool: Db, experimentId: number, outcomes: ImageSetOutcome[]): Promise<void> {
  if (outcomes.length === 0) return;
  const conn = await pool.getConnection();
  try {
    await conn.beginTransaction();
    await conn.batch(
      `UPDATE image_set SET
         status = IF(? = 'running' AND status IN ('done','failed'), status, ?),
         attempts = GREATEST(attempts, ?), skipped = ?, output_prefix = COALESCE(?, output_prefix),
         error = IF(? = 'done', NULL, COALESCE(?, error)),
         started_at = COALESCE(started_at, NOW(3)),
         finished_at = IF(? IN ('done','failed','cancelled'), NOW(3), finished_at)
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
        o.imageSetId,
        experimentId,
      ]),
    );
    const resultRows = outcomes.flatMap((o) =>
      (o.results ?? []).map((r) => [experimentId, o.imageSetId, r.kind, r.uri, r.size, r.checksum]),
    );
    if (resultRows.length > 0) {
      await conn.batch(
        `INSERT INTO result_file (experiment_id, image_set_id, kind, uri, size, checksum) VALUES (?, ?, ?, ?, ?, ?)
         ON DUPLICATE KEY UPDATE size = VALUES(size), checksum = VALUES(checksum), kind = VALUES(kind)`,
        resultRows,
      );
    }
    await conn.commit();
  } catch (err) {
    await conn.rollback().catch(() => undefined);
    throw err;
  } finally {
    await conn.release();
  }
}

export async function upsertExperimentResult(
  pool: Db,
  experimentId: number,
  r: { kind: string; uri: string; size: number; checksum: string },
): Promise<void> {
  await pool.query(
    `INSERT INTO result_file (experiment_id, image_set_id, kind, uri, size, checksum) VALUES (?, NULL, ?, ?, ?, ?)
     ON DUPLICATE KEY UPDATE size = VALUES(size), checksum = VALUES(checksum), kind = VALUES(kind)`,
    [experimentId, r.kind, r.uri, r.size, r.checksum],
  );
}

export async function imageSetCounts(
  pool: Db,
  experimentId: number,
): Promise<Record<ImageSetStatus, number> & { total: number }> {
  const rows = await pool.query<Array<{ status: ImageSetStatus; n: number }>>(
    'SELECT status, COUNT(*) AS n FROM image_set WHERE experiment_id = ? GROUP BY status',
    [experimentId],
  );
  const counts = { pending: 0, running: 0, done: 0, failed: 0, cancelled: 0, total: 0 };
  for (const r of rows) {
    counts[r.status] = Number(r.n);
    counts.total += Number(r.n);
  }
  return counts;
}
