/**
 * Starting each daemon of the local stack (the Temporal dev server, MariaDB, MinIO) on 127.0.0.1 with
 * the ports and credentials of the stack state, and waiting until it answers.
 */
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import execa from 'execa';
import mariadb, { type Connection } from 'mariadb';
import { DEFAULTS, SEARCH_ATTRIBUTE_KEYS } from '../../core/model';
import { currentUserName } from './install';
import { isPortAnswering, spawnDetached, waitUntilReady } from './processes';
import { StackError, type ServiceName, type StackPaths, type StackState } from './state';
import { proxyAnswers, proxyArgs, writeProxyConfig, type ProxyPlan } from './temporal-tls-proxy';
import { tlsFiles } from './tls';

export const TEMPORAL_NAMESPACE = DEFAULTS.TEMPORAL_NAMESPACE;
export const DATABASE_NAME = DEFAULTS.DB_NAME;
export const DATABASE_USER = DEFAULTS.DB_USER;
export const DATABASE_MIGRATE_USER = DEFAULTS.DB_MIGRATE_USER;
export const S3_REGION = DEFAULTS.S3_REGION;

/** Custom search attributes the workflows set, as the Temporal CLI names their types (KEYWORD → Keyword). */
export const TEMPORAL_SEARCH_ATTRIBUTES: Record<string, string> = Object.fromEntries(
  Object.values(SEARCH_ATTRIBUTE_KEYS).map((key) => [key.name, key.type.charAt(0) + key.type.slice(1).toLowerCase()]),
);

/** The default address of the local stack; `state.host` is the one in force. */
export const HOST = '127.0.0.1';

/**
 * Where the dev server's plaintext gRPC listens: the stack's host, or, in the secure stack, loopback
 * only, behind the mTLS proxy on the host.
 */
export function temporalDevHost(state: StackState): string {
  return state.secure ? '127.0.0.1' : state.host;
}

export function temporalProxyPlan(paths: StackPaths, state: StackState): ProxyPlan {
  if (state.temporal.tlsPort === undefined) throw new StackError('the secure stack has no TLS port for Temporal in its state; run "npm run stack -- up --secure"');
  return { listenHost: state.host, listenPort: state.temporal.tlsPort, upstreamPort: state.temporal.port, dir: paths.temporalProxyDir, files: tlsFiles(paths.tlsDir) };
}
const READY_TIMEOUT_MS: Record<ServiceName, number> = { temporal: 60_000, mariadb: 60_000, minio: 60_000 };

/** The string we expect in /proc/<pid>/cmdline, to tell our daemon from a recycled pid. */
export function expectedCommand(name: ServiceName): string {
  return name === 'mariadb' ? 'mariadbd' : name;
}

/** The TLS proxy in front of Temporal (secure stack). */
export const PROXY_COMMAND = 'nginx';

export function logFileOf(paths: StackPaths, name: ServiceName): string {
  return path.join(paths.logsDir, `${name}.log`);
}

// ---------------------------------------------------------------------------------------------
// Temporal

async function temporalIsServing(state: StackState): Promise<boolean> {
  const result = await execa(
    state.binaries.temporal,
    ['operator', 'cluster', 'health', '--address', `${temporalDevHost(state)}:${state.temporal.port}`, '--command-timeout', '2s'],
    { reject: false, timeout: 5000, stdin: 'ignore' },
  );
  return result.exitCode === 0 && result.stdout.includes('SERVING');
}

async function startTemporal(paths: StackPaths, state: StackState): Promise<number> {
  fs.mkdirSync(paths.temporalDir, { recursive: true });
  const searchAttributeArgs = Object.entries(TEMPORAL_SEARCH_ATTRIBUTES).flatMap(([key, type]) => ['--search-attribute', `${key}=${type}`]);
  const logFile = logFileOf(paths, 'temporal');
  const pid = spawnDetached(
    state.binaries.temporal,
    [
      'server',
      'start-dev',
      '--ip',
      temporalDevHost(state),
      '--port',
      String(state.temporal.port),
      '--ui-port',
      String(state.temporal.uiPort),
      // Pinned rather than left random so a restart keeps every port and nothing collides.
      '--http-port',
      String(state.temporal.httpPort),
      '--metrics-port',
      String(state.temporal.metricsPort),
      '--db-filename',
      paths.temporalDb,
      '--namespace',
      TEMPORAL_NAMESPACE,
      ...searchAttributeArgs,
    ],
    logFile,
  );
  await waitUntilReady({
    service: 'Temporal',
    logFile,
    timeoutMs: READY_TIMEOUT_MS.temporal,
    pid,
    expectedCommand: expectedCommand('temporal'),
    probe: async () => (await isPortAnswering(state.temporal.port, 500, temporalDevHost(state))) && (await temporalIsServing(state)),
  });
  if (state.secure) state.temporal.proxyPid = await startTemporalProxy(paths, state);
  return pid;
}

/** nginx with mTLS on the stack's host, passing gRPC to the dev server on loopback. */
async function startTemporalProxy(paths: StackPaths, state: StackState): Promise<number> {
  const nginx = state.binaries.nginx;
  if (nginx === undefined) throw new StackError('the secure stack needs nginx; run "npm run stack -- up --secure"');
  const plan = temporalProxyPlan(paths, state);
  const configFile = writeProxyConfig(plan);
  const logFile = path.join(paths.logsDir, 'temporal-tls-proxy.log');
  const pid = spawnDetached(nginx, proxyArgs(plan, configFile), logFile);
  await waitUntilReady({
    service: 'Temporal TLS proxy (nginx)',
    logFile: path.join(plan.dir, 'error.log'),
    timeoutMs: 20_000,
    pid,
    expectedCommand: PROXY_COMMAND,
    probe: () => proxyAnswers(plan),
  });
  return pid;
}

// ---------------------------------------------------------------------------------------------
// MariaDB

function mariadbIsInitialised(paths: StackPaths): boolean {
  return fs.existsSync(path.join(paths.mariadbDataDir, 'mysql'));
}

async function initialiseMariadbDataDir(paths: StackPaths, state: StackState): Promise<void> {
  fs.mkdirSync(paths.mariadbDataDir, { recursive: true });
  const logFile = path.join(paths.logsDir, 'mariadb-install-db.log');
  const result = await execa(
    state.binaries.mariadbInstallDb,
    ['--no-defaults', `--datadir=${paths.mariadbDataDir}`, `--user=${currentUserName()}`, '--skip-test-db'],
    { all: true, reject: false, stdin: 'ignore' },
  );
  fs.mkdirSync(paths.logsDir, { recursive: true });
  fs.writeFileSync(logFile, result.all ?? '');
  if (result.exitCode !== 0) {
    // Remove the half-made datadir so the next attempt starts clean instead of failing differently.
    fs.rmSync(paths.mariadbDataDir, { recursive: true, force: true });
    throw new StackError(`mariadb-install-db failed (exit ${result.exitCode}); see ${logFile}`);
  }
}

/** Root over the Unix socket: mariadb-install-db gives the OS user that ran it socket authentication. */
export function connectAsRoot(paths: StackPaths): Promise<Connection> {
  return mariadb.createConnection({ socketPath: paths.mariadbSocket, user: currentUserName(), connectTimeout: 2000 });
}

async function mariadbAcceptsRoot(paths: StackPaths): Promise<boolean> {
  try {
    const connection = await connectAsRoot(paths);
    await connection.end();
    return true;
  } catch {
    return false;
  }
}

/** mariadbd's TLS flags in the secure stack: TCP clients must use TLS (the admin socket is exempt). */
function mariadbTlsArgs(paths: StackPaths, state: StackState): string[] {
  if (!state.secure) return [];
  const files = tlsFiles(paths.tlsDir);
  return [`--ssl-ca=${files.caCert}`, `--ssl-cert=${files.serverCert}`, `--ssl-key=${files.serverKey}`, '--require-secure-transport=ON', '--tls-version=TLSv1.2,TLSv1.3'];
}

async function startMariadb(paths: StackPaths, state: StackState): Promise<number> {
  if (!mariadbIsInitialised(paths)) await initialiseMariadbDataDir(paths, state);
  const logFile = logFileOf(paths, 'mariadb');
  const pid = spawnDetached(
    state.binaries.mariadbd,
    [
      // --no-defaults: ignore /etc/mysql so the system's configuration cannot change our private server.
      '--no-defaults',
      `--datadir=${paths.mariadbDataDir}`,
      `--socket=${paths.mariadbSocket}`,
      `--pid-file=${paths.mariadbPidFile}`,
      `--log-error=${logFile}`,
      `--port=${state.mariadb.port}`,
      `--bind-address=${state.host}`,
      `--user=${currentUserName()}`,
      '--skip-name-resolve',
      '--max-connections=500',
      // Debian's my.cnf sets utf8mb4, which --no-defaults skips; the server default would be latin1.
      '--character-set-server=utf8mb4',
      '--collation-server=utf8mb4_unicode_ci',
      // Flush the redo log once a second instead of per commit: a killed mariadbd loses nothing
      // (the OS still has the writes), only an OS crash could, which is fine for a local stack.
      '--innodb-flush-log-at-trx-commit=2',
      ...mariadbTlsArgs(paths, state),
    ],
    logFile,
  );
  await waitUntilReady({
    service: 'MariaDB',
    logFile,
    timeoutMs: READY_TIMEOUT_MS.mariadb,
    pid,
    expectedCommand: expectedCommand('mariadb'),
    probe: async () => (await isPortAnswering(state.mariadb.port, 500, state.host)) && (await mariadbAcceptsRoot(paths)),
  });
  // Accounts and schema: provision.ts, on every `up`.
  return pid;
}

// ---------------------------------------------------------------------------------------------
// MinIO

export function minioUrl(state: StackState): string {
  return `${state.secure ? 'https' : 'http'}://${state.host}:${state.minio.port}`;
}

async function minioIsLive(paths: StackPaths, state: StackState): Promise<boolean> {
  if (!state.secure) {
    try {
      const response = await fetch(`${minioUrl(state)}/minio/health/live`, { signal: AbortSignal.timeout(2000) });
      return response.status === 200;
    } catch {
      return false;
    }
  }
  const ca = fs.readFileSync(tlsFiles(paths.tlsDir).caCert);
  return new Promise((resolve) => {
    const request = https.get(`${minioUrl(state)}/minio/health/live`, { ca, timeout: 2000 }, (response) => {
      response.resume();
      resolve(response.statusCode === 200);
    });
    request.once('timeout', () => request.destroy());
    request.once('error', () => resolve(false));
  });
}

/** MinIO serves HTTPS when its certs directory holds public.crt and private.key. */
function prepareMinioCerts(paths: StackPaths): void {
  const files = tlsFiles(paths.tlsDir);
  fs.mkdirSync(path.join(paths.minioCertsDir, 'CAs'), { recursive: true });
  fs.copyFileSync(files.serverCert, path.join(paths.minioCertsDir, 'public.crt'));
  fs.copyFileSync(files.serverKey, path.join(paths.minioCertsDir, 'private.key'));
  fs.chmodSync(path.join(paths.minioCertsDir, 'private.key'), 0o600);
  fs.copyFileSync(files.caCert, path.join(paths.minioCertsDir, 'CAs', 'ca.crt'));
}

async function startMinio(paths: StackPaths, state: StackState): Promise<number> {
  fs.mkdirSync(paths.minioDataDir, { recursive: true });
  const logFile = logFileOf(paths, 'minio');
  // Without --certs-dir MinIO looks in ~/.minio/certs: point it at the stack's own (empty when plain).
  fs.rmSync(paths.minioCertsDir, { recursive: true, force: true });
  if (state.secure) prepareMinioCerts(paths);
  else fs.mkdirSync(paths.minioCertsDir, { recursive: true });
  const pid = spawnDetached(
    state.binaries.minio,
    [
      'server',
      paths.minioDataDir,
      '--address',
      `${state.host}:${state.minio.port}`,
      '--console-address',
      `${HOST}:${state.minio.consolePort}`,
      '--certs-dir',
      paths.minioCertsDir,
      '--quiet',
    ],
    logFile,
    {
      ...process.env,
      MINIO_ROOT_USER: state.minio.accessKey,
      MINIO_ROOT_PASSWORD: state.minio.secretKey,
      // No phoning home for updates from a local development server.
      MINIO_UPDATE: 'off',
      // The background scanner (usage statistics, lifecycle, healing on one drive) otherwise crawls every
      // object of the test and bench buckets again and again: 0.09 of a core with a 16 GB data dir, CPU
      // that analyses on this machine then lack. Slowest keeps it, at a tenth of the cost.
      MINIO_SCANNER_SPEED: 'slowest',
    },
  );
  await waitUntilReady({
    service: 'MinIO',
    logFile,
    timeoutMs: READY_TIMEOUT_MS.minio,
    pid,
    expectedCommand: expectedCommand('minio'),
    probe: () => minioIsLive(paths, state),
  });
  return pid;
}

export const starters: Record<ServiceName, (paths: StackPaths, state: StackState) => Promise<number>> = {
  temporal: startTemporal,
  mariadb: startMariadb,
  minio: startMinio,
};
