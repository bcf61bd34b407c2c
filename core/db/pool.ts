import type { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import * as mariadb from 'mariadb';
import { dbConfig, migrationConfig, type DbConfig } from '../config';
import { ConfigError, DatabaseAccessDeniedError, DatabaseUnavailableError, SchemaOutdatedError } from '../errors';

/**
 * MariaDB access: one pool per process, parameterised queries only. This room (core/db) is the only
 * place that speaks SQL; rows are validated with zod where they cross into the program (rows.ts).
 *
 * Least privilege: runtime processes (CLI, watcher, workers) connect with an account that may only
 * read and write rows. Versioned migrations run separately, with the migration account, through
 * `cpflow migrate` (the local stack runs it on every `up`); a runtime process only checks at first
 * use that the schema is as new as its code and says what to run when it is not.
 */

export type Db = mariadb.Pool;
export type Conn = mariadb.PoolConnection;

const MIGRATIONS_DIR = path.join(__dirname, 'migrations');
const MIGRATION_LOCK = 'cpflow_schema_migration';

let sharedPool: { pool: Db; ready: Promise<void> } | undefined;

function readPem(variable: string, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new ConfigError(`invalid configuration: ${variable}=${JSON.stringify(file)}: ${(err as Error).message}`);
  }
}

/**
 * TLS options for the connector (Node's tls.connect options), or undefined for plaintext. TLS is on when
 * CPFLOW_DB_TLS=true or any certificate is given; the server's certificate is verified (and must name
 * CPFLOW_DB_HOST) unless CPFLOW_DB_TLS_VERIFY_SERVER=false.
 */
export function dbTlsOptions(config: DbConfig): mariadb.PoolConfig['ssl'] {
  const enabled = config.CPFLOW_DB_TLS || Boolean(config.CPFLOW_DB_TLS_CA || config.CPFLOW_DB_TLS_CERT || config.CPFLOW_DB_TLS_KEY);
  if (!enabled) return undefined;
  if (Boolean(config.CPFLOW_DB_TLS_CERT) !== Boolean(config.CPFLOW_DB_TLS_KEY)) {
    throw new ConfigError('invalid configuration: CPFLOW_DB_TLS_CERT and CPFLOW_DB_TLS_KEY go together (a client certificate and its key)');
  }
  return {
    ca: config.CPFLOW_DB_TLS_CA ? readPem('CPFLOW_DB_TLS_CA', config.CPFLOW_DB_TLS_CA) : undefined,
    cert: config.CPFLOW_DB_TLS_CERT ? readPem('CPFLOW_DB_TLS_CERT', config.CPFLOW_DB_TLS_CERT) : undefined,
    key: config.CPFLOW_DB_TLS_KEY ? readPem('CPFLOW_DB_TLS_KEY', config.CPFLOW_DB_TLS_KEY) : undefined,
    rejectUnauthorized: config.CPFLOW_DB_TLS_VERIFY_SERVER,
  };
}

export function createPool(config: DbConfig = dbConfig()): Db {
  return mariadb.createPool({
    ssl: dbTlsOptions(config),
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
    // JSON columns arrive as strings on MariaDB (JSON is LONGTEXT there); rows are parsed by zod.
    autoJsonMap: false,
  });
}

/** MariaDB error numbers that mean "this account may not", not "the server is away". */
const ACCESS_DENIED_ERRNOS = new Set([1044 /* database */, 1045 /* user or password */, 1049 /* unknown database */, 1698 /* plugin */]);

function accessDenied(err: unknown): { errno: number; message: string } | undefined {
  for (let e: unknown = err; e instanceof Error; e = (e as Error & { cause?: unknown }).cause) {
    const { errno, sqlMessage } = e as Error & { errno?: number; sqlMessage?: string };
    if (errno !== undefined && ACCESS_DENIED_ERRNOS.has(errno)) return { errno, message: sqlMessage ?? e.message };
  }
  return undefined;
}

/**
 * The process-wide pool, its schema checked. Callers never close it; `closeDb` is for tests and
 * shutdown. A refused login fails at once (the pool would otherwise retry it until its acquire
 * time-out and report the server as unreachable).
 */
export async function db(): Promise<Db> {
  if (!sharedPool) {
    const config = dbConfig();
    const where = `${config.CPFLOW_DB_HOST}:${config.CPFLOW_DB_PORT}`;
    const pool = createPool(config);
    // The pool emits each failed connection attempt (the typings omit the event; the class is an EventEmitter).
    const events = pool as unknown as EventEmitter;
    const onPoolError = (err: Error): void => {
      const denied = accessDenied(err);
      if (denied) rejectRefused(new DatabaseAccessDeniedError(where, denied.message));
    };
    let rejectRefused: (err: Error) => void = () => undefined;
    const refused = new Promise<never>((_, reject) => {
      rejectRefused = reject;
    });
    refused.catch(() => undefined);
    events.on('error', onPoolError);
    const ready = Promise.race([checkSchema(pool, where), refused]).then(
      () => {
        events.removeListener('error', onPoolError);
      },
      (err: unknown) => {
        sharedPool = undefined;
        void pool.end().catch(() => undefined);
        if (err instanceof DatabaseAccessDeniedError || err instanceof SchemaOutdatedError) throw err;
        const denied = accessDenied(err);
        if (denied) throw new DatabaseAccessDeniedError(where, denied.message);
        throw new DatabaseUnavailableError(where, err);
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

export async function inTransaction<T>(pool: Db, work: (conn: Conn) => Promise<T>): Promise<T> {
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

/** The schema version this code needs: its newest migration. */
export function requiredSchemaVersion(): number {
  return Math.max(0, ...loadMigrations().map((m) => m.version));
}

/** The newest migration applied to the pool's database (0 for an empty database). */
export async function schemaVersion(pool: Db): Promise<number> {
  try {
    const rows = await pool.query<Array<{ v: number | null }>>('SELECT MAX(version) AS v FROM schema_migration');
    return Number(rows[0]?.v ?? 0);
  } catch (err) {
    if ((err as { errno?: number }).errno === 1146 /* no such table */) return 0;
    throw err;
  }
}

async function checkSchema(pool: Db, where: string): Promise<void> {
  const [found, needed] = [await schemaVersion(pool), requiredSchemaVersion()];
  // A newer schema is fine: migrations only add, so code one version behind keeps working during a rollout.
  if (found < needed) throw new SchemaOutdatedError(where, found, needed);
}

/**
 * `cpflow migrate`: apply pending migrations with the migration account (CPFLOW_DB_MIGRATE_USER /
 * _PASSWORD, else the runtime account). Returns the versions applied now.
 */
export async function migrateDatabase(config: DbConfig = dbConfig(), migration = migrationConfig()): Promise<{ applied: number[]; version: number }> {
  const where = `${config.CPFLOW_DB_HOST}:${config.CPFLOW_DB_PORT}`;
  const pool = createPool({
    ...config,
    CPFLOW_DB_USER: migration.CPFLOW_DB_MIGRATE_USER ?? config.CPFLOW_DB_USER,
    CPFLOW_DB_PASSWORD: migration.CPFLOW_DB_MIGRATE_USER ? (migration.CPFLOW_DB_MIGRATE_PASSWORD ?? '') : config.CPFLOW_DB_PASSWORD,
    CPFLOW_DB_POOL_SIZE: 1,
  });
  try {
    const applied = await migrate(pool);
    return { applied, version: await schemaVersion(pool) };
  } catch (err) {
    const denied = accessDenied(err);
    if (denied) throw new DatabaseAccessDeniedError(where, denied.message);
    const { errno, sqlMessage } = err as { errno?: number; sqlMessage?: string };
    if (errno === 1142 /* command denied */ || errno === 1227 /* privilege needed */) {
      throw new ConfigError(
        `MariaDB at ${where}: ${sqlMessage ?? (err as Error).message}: \`cpflow migrate\` needs the migration account ` +
          '(set CPFLOW_DB_MIGRATE_USER and CPFLOW_DB_MIGRATE_PASSWORD)',
      );
    }
    throw err;
  } finally {
    await pool.end().catch(() => undefined);
  }
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
