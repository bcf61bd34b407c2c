/**
 * Where the local stack keeps its installs, data and bookkeeping, and the zod-validated state file
 * (<cache>/stack/state.json) that remembers ports, pids, credentials and binary paths between runs.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';

export const SERVICE_NAMES = ['temporal', 'mariadb', 'minio'] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];

export function isServiceName(value: string): value is ServiceName {
  return (SERVICE_NAMES as readonly string[]).includes(value);
}

/** Error whose message is meant for a person at a terminal: the CLI prints it without a stack trace. */
export class StackError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StackError';
  }
}

export function cacheDir(): string {
  const fromEnv = process.env.CPFLOW_CACHE_DIR;
  return path.resolve(fromEnv && fromEnv.trim() !== '' ? fromEnv : path.join(os.homedir(), '.cache', 'cpflow'));
}

/** Every path the stack uses, derived from one cache directory so tests can point it anywhere. */
export function stackPaths(root: string = cacheDir()) {
  return {
    root,
    binDir: path.join(root, 'bin'),
    toolsVenv: path.join(root, 'tools-venv'),
    cellprofilerExecutable: path.join(root, 'cellprofiler-venv', 'bin', 'cellprofiler'),
    logsDir: path.join(root, 'logs'),
    stateDir: path.join(root, 'stack'),
    stateFile: path.join(root, 'stack', 'state.json'),
    lockDir: path.join(root, 'stack', 'up.lock'),
    temporalDir: path.join(root, 'temporal'),
    temporalDb: path.join(root, 'temporal', 'temporal.db'),
    mariadbDir: path.join(root, 'mariadb'),
    mariadbDataDir: path.join(root, 'mariadb', 'data'),
    mariadbSocket: path.join(root, 'mariadb', 'mysqld.sock'),
    mariadbPidFile: path.join(root, 'mariadb', 'mariadbd.pid'),
    minioDir: path.join(root, 'minio'),
    minioDataDir: path.join(root, 'minio', 'data'),
    /** The secure stack's CA and certificates (deploy/local/tls.ts). */
    tlsDir: path.join(root, 'tls'),
    minioCertsDir: path.join(root, 'minio', 'certs'),
    temporalProxyDir: path.join(root, 'temporal', 'tls-proxy'),
  };
}
export type StackPaths = ReturnType<typeof stackPaths>;

const port = z.number().int().min(1).max(65535);
const pid = z.number().int().positive().nullable();

const temporalState = z.object({
  port,
  uiPort: port,
  httpPort: port,
  metricsPort: port,
  pid,
  /** Secure stack only: the mTLS proxy's public port and pid (the dev server then listens on 127.0.0.1). */
  tlsPort: port.optional(),
  proxyPid: pid.default(null),
});
const mariadbState = z.object({
  port,
  pid,
  password: z.string().min(16),
});
const minioState = z.object({
  port,
  consolePort: port,
  pid,
  accessKey: z.string().min(8),
  secretKey: z.string().min(16),
});

export const stackStateSchema = z.object({
  version: z.literal(1),
  binaries: z.object({
    temporal: z.string(),
    temporalTestServer: z.string(),
    mariadbd: z.string(),
    mariadbInstallDb: z.string(),
    minio: z.string(),
    /** Secure stack only: nginx, Temporal's TLS proxy. */
    nginx: z.string().optional(),
  }),
  /** `up --secure`: TLS everywhere, mTLS to Temporal, X509 for MariaDB's cpflow accounts, HTTPS MinIO. */
  secure: z.boolean().default(false),
  /** The address every service listens on and clients are given (127.0.0.1 unless a test host needs another). */
  host: z.string().default('127.0.0.1'),
  temporal: temporalState,
  mariadb: mariadbState,
  minio: minioState,
});
export type StackState = z.infer<typeof stackStateSchema>;

export function readState(paths: StackPaths): StackState | undefined {
  let raw: string;
  try {
    raw = fs.readFileSync(paths.stateFile, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const parsed = stackStateSchema.safeParse(JSON.parse(raw));
  if (!parsed.success) {
    throw new StackError(
      `state file ${paths.stateFile} is not valid (${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}); ` +
        `run "npm run stack -- down --wipe" to start over`,
    );
  }
  return parsed.data;
}

/** Write via a temporary file and rename, so a crash never leaves a half-written state file behind. */
export function writeState(paths: StackPaths, state: StackState): void {
  fs.mkdirSync(paths.stateDir, { recursive: true });
  const temporary = `${paths.stateFile}.${process.pid}.tmp`;
  fs.writeFileSync(temporary, JSON.stringify(stackStateSchema.parse(state), null, 2) + '\n', { mode: 0o600 });
  fs.renameSync(temporary, paths.stateFile);
}
