import fs from 'node:fs';
import path from 'node:path';
import * as mariadb from 'mariadb';
import { dbConfig, type DbConfig } from '../config';
import { ConfigError, DatabaseUnavailableError } from '../errors';

/**
 * MariaDB access: one pool per process, versioned migrations applied on first use, parameterised
 * queries only. This room (core/db) is the only place that speaks SQL; rows are validated with zod
 * where they cross into the program (rows.ts).
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
