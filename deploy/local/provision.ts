/**
 * Least privilege on the local stack, converged on every `up` (idempotent, a second or two):
 *
 * - MariaDB: the migration account `cpflow_migrate` (DDL on cpflow's database) and the runtime account
 *   `cpflow` (SELECT, INSERT, UPDATE, DELETE only), made by root over the socket (core/db/admin.ts);
 *   then the schema is migrated with the migration account. Runtime processes never hold DDL rights
 *   and never migrate; they check the schema version and say to run `cpflow migrate` when behind.
 * - MinIO: a user with a policy limited to `cpflow-*` buckets (create, list, read, write, delete
 *   objects), made with MinIO's client `mc` through the root credentials, which stay in the state
 *   file and are never handed to cpflow's processes.
 *
 * The TLS work on the same stack (issue 11) builds on this: the accounts and the policy do not
 * depend on the transport, and the migration connects through core/db's pool like every process.
 */
import fs from 'node:fs';
import execa from 'execa';
import mariadb from 'mariadb';
import { dbConfig } from '../../core/config';
import { createDatabaseIfMissing, provisionDatabase, requireTlsForAccounts } from '../../core/db/admin';
import { dbTlsOptions, migrateDatabase } from '../../core/db/pool';
import { DEFAULTS } from '../../core/model';
import { connectAsRoot, DATABASE_MIGRATE_USER, DATABASE_NAME, DATABASE_USER, HOST, minioUrl } from './daemons';
import { currentUserName, type Logger } from './install';
import { StackError, stackPaths, type StackPaths, type StackState } from './state';
import { tlsFiles } from './tls';

/** The policy of cpflow's S3 user: its own buckets, nothing else (no other bucket, no admin calls). */
export function cpflowBucketPolicy(prefix = DEFAULTS.BUCKET_PREFIX): object {
  const buckets = `arn:aws:s3:::${prefix}*`;
  return {
    Version: '2012-10-17',
    Statement: [
      {
        Sid: 'CpflowBuckets',
        Effect: 'Allow',
        Action: ['s3:CreateBucket', 's3:ListBucket', 's3:GetBucketLocation', 's3:ListBucketMultipartUploads'],
        Resource: [buckets],
      },
      {
        Sid: 'CpflowObjects',
        Effect: 'Allow',
        Action: ['s3:GetObject', 's3:PutObject', 's3:DeleteObject', 's3:AbortMultipartUpload', 's3:ListMultipartUploadParts'],
        Resource: [`${buckets}/*`],
      },
    ],
  };
}

export const S3_POLICY_NAME = 'cpflow-app';
const MC_ALIAS = 'cpflowstack';

export interface StackCredentials {
  migratePassword: string;
  appAccessKey: string;
  appSecretKey: string;
}

/** The credentials provisioning needs; states from before least privilege get them in planState. */
export function credentialsOf(state: StackState): StackCredentials {
  const { migratePassword } = state.mariadb;
  const { appAccessKey, appSecretKey } = state.minio;
  if (!migratePassword || !appAccessKey || !appSecretKey) throw new StackError('stack state lacks the migration or S3 user credentials; run "npm run stack -- up"');
  return { migratePassword, appAccessKey, appSecretKey };
}

/** The secure stack's MariaDB TLS settings as CPFLOW_* variables (none on a plain stack). */
function dbTlsEnv(state: StackState, paths: StackPaths = stackPaths()): Record<string, string> {
  if (!state.secure) return {};
  const files = tlsFiles(paths.tlsDir);
  return { CPFLOW_DB_TLS: 'true', CPFLOW_DB_TLS_CA: files.caCert, CPFLOW_DB_TLS_CERT: files.clientCert, CPFLOW_DB_TLS_KEY: files.clientKey };
}

/** Connection settings of the migration account, as CPFLOW_* variables (for `cpflow migrate` and tests). */
export function migrationEnv(state: StackState, database = DATABASE_NAME): Record<string, string> {
  return {
    CPFLOW_DB_HOST: state.host,
    CPFLOW_DB_PORT: String(state.mariadb.port),
    CPFLOW_DB_NAME: database,
    CPFLOW_DB_USER: DATABASE_USER,
    CPFLOW_DB_PASSWORD: state.mariadb.password,
    CPFLOW_DB_MIGRATE_USER: DATABASE_MIGRATE_USER,
    CPFLOW_DB_MIGRATE_PASSWORD: credentialsOf(state).migratePassword,
    ...dbTlsEnv(state),
  };
}

async function provisionMariadb(paths: StackPaths, state: StackState): Promise<void> {
  const root = await connectAsRoot(paths);
  try {
    await provisionDatabase(root, {
      database: DATABASE_NAME,
      runtime: { user: DATABASE_USER, password: state.mariadb.password },
      migration: { user: DATABASE_MIGRATE_USER, password: credentialsOf(state).migratePassword },
      // A stack on another address (the multi-host drill) is reached from other hosts' addresses.
      hosts: state.host === HOST ? [HOST, 'localhost'] : [HOST, 'localhost', '%'],
      scratchDatabases: true,
    });
    await requireTlsForAccounts(root, state.secure, [currentUserName()]);
  } finally {
    await root.end();
  }
}

/** Create (if needed) and migrate a database of the stack with the migration account. */
export async function migrateStackDatabase(state: StackState, database = DATABASE_NAME): Promise<number[]> {
  const env = migrationEnv(state, database);
  if (database !== DATABASE_NAME) {
    // A scratch database (cpflow_<something>): the migration account may create those on this stack.
    const conn = await mariadb.createConnection({
      host: state.host,
      port: state.mariadb.port,
      user: DATABASE_MIGRATE_USER,
      password: env.CPFLOW_DB_MIGRATE_PASSWORD,
      ssl: dbTlsOptions(dbConfig(env)),
    });
    try {
      await createDatabaseIfMissing(conn, database);
    } finally {
      await conn.end();
    }
  }
  const { applied } = await migrateDatabase(dbConfig(env), {
    CPFLOW_DB_MIGRATE_USER: env.CPFLOW_DB_MIGRATE_USER,
    CPFLOW_DB_MIGRATE_PASSWORD: env.CPFLOW_DB_MIGRATE_PASSWORD,
  });
  return applied;
}

async function mc(paths: StackPaths, state: StackState, args: string[]): Promise<void> {
  const mcBinary = state.binaries.mc;
  if (!mcBinary) throw new StackError('MinIO client mc is not installed; run "npm run stack -- up"');
  fs.mkdirSync(paths.mcConfigDir, { recursive: true });
  if (state.secure) {
    // MinIO serves HTTPS with the stack's own CA: mc trusts the CAs in <config dir>/certs/CAs.
    const cas = `${paths.mcConfigDir}/certs/CAs`;
    fs.mkdirSync(cas, { recursive: true });
    fs.copyFileSync(tlsFiles(paths.tlsDir).caCert, `${cas}/cpflow-stack-ca.crt`);
  }
  const base = new URL(minioUrl(state));
  base.username = encodeURIComponent(state.minio.accessKey);
  base.password = encodeURIComponent(state.minio.secretKey);
  const result = await execa(mcBinary, ['--config-dir', paths.mcConfigDir, '--no-color', ...args], {
    reject: false,
    all: true,
    stdin: 'ignore',
    timeout: 60_000,
    // Root credentials travel in the environment of this one child (never on a command line).
    env: { [`MC_HOST_${MC_ALIAS}`]: base.toString().replace(/\/$/, '') },
  });
  if (result.exitCode !== 0) throw new StackError(`mc ${args.slice(0, 3).join(' ')} failed (exit ${result.exitCode}): ${(result.all ?? '').trim().split('\n').slice(-3).join(' ')}`);
}

async function provisionMinio(paths: StackPaths, state: StackState): Promise<void> {
  const { appAccessKey, appSecretKey } = credentialsOf(state);
  fs.writeFileSync(paths.appPolicyFile, JSON.stringify(cpflowBucketPolicy(), null, 2));
  await mc(paths, state, ['admin', 'policy', 'create', MC_ALIAS, S3_POLICY_NAME, paths.appPolicyFile]);
  // The secret is an argument here (mc reads it no other way without a terminal); a local stack's
  // processes all belong to one user, and the key never leaves this machine.
  await mc(paths, state, ['admin', 'user', 'add', MC_ALIAS, appAccessKey, appSecretKey]);
  await mc(paths, state, ['admin', 'policy', 'attach', MC_ALIAS, S3_POLICY_NAME, '--user', appAccessKey]).catch((err: unknown) => {
    // Attaching a policy the user already has is reported as an error by some mc builds.
    if (!/already/i.test(err instanceof Error ? err.message : String(err))) throw err;
  });
}

/** Accounts, grants, schema and the S3 user: everything cpflow's processes need, and nothing more. */
export async function provisionStack(paths: StackPaths, state: StackState, log: Logger): Promise<void> {
  const started = Date.now();
  await Promise.all([provisionMariadb(paths, state), provisionMinio(paths, state)]);
  const applied = await migrateStackDatabase(state);
  if (applied.length > 0) log(`migrated MariaDB database ${DATABASE_NAME} (versions ${applied.join(', ')})`);
  log(`accounts provisioned (MariaDB runtime + migration, MinIO user limited to ${DEFAULTS.BUCKET_PREFIX}*) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
