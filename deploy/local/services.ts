/**
 * The local stack as a library: bring Temporal, MariaDB and MinIO up on 127.0.0.1 (reusing whatever
 * is already running and healthy), stop and start single services for fault drills, and report the
 * connection settings as CPFLOW_* environment variables.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import {
  expectedCommand,
  HOST,
  logFileOf,
  minioUrl,
  PROXY_COMMAND,
  starters,
  temporalDevHost,
  TEMPORAL_NAMESPACE,
  DATABASE_NAME,
  DATABASE_USER,
  S3_REGION,
} from './daemons';
import { ensureInstalled, type Binaries, type Logger } from './install';
import { ensureNginx } from './temporal-tls-proxy';
import { ensureCertificates, tlsFiles } from './tls';
import { findFreePort, isPortAnswering, isPortFree, isProcessAlive, stopProcess, withLock } from './processes';
import {
  cacheDir,
  readState,
  SERVICE_NAMES,
  StackError,
  stackPaths,
  writeState,
  type ServiceName,
  type StackPaths,
  type StackState,
} from './state';

export { SERVICE_NAMES, StackError, isServiceName, type ServiceName } from './state';

export { DATABASE_NAME, DATABASE_USER, S3_REGION, TEMPORAL_NAMESPACE, TEMPORAL_SEARCH_ATTRIBUTES } from './daemons';

/** Connection settings of a running stack, keyed by the environment variable names cpflow reads. */
export interface StackEnv {
  CPFLOW_TEMPORAL_ADDRESS: string;
  CPFLOW_TEMPORAL_NAMESPACE: string;
  CPFLOW_TEMPORAL_UI_URL: string;
  CPFLOW_DB_HOST: string;
  CPFLOW_DB_PORT: string;
  CPFLOW_DB_USER: string;
  CPFLOW_DB_PASSWORD: string;
  CPFLOW_DB_NAME: string;
  CPFLOW_S3_ENDPOINT: string;
  CPFLOW_S3_REGION: string;
  CPFLOW_S3_ACCESS_KEY: string;
  CPFLOW_S3_SECRET_KEY: string;
  CPFLOW_TEMPORAL_CLI: string;
  CPFLOW_TEMPORAL_TEST_SERVER: string;
  /** Secure stack only: mTLS to Temporal (aliases of envconfig's TEMPORAL_TLS_*), TLS + X509 to MariaDB, HTTPS to MinIO. */
  CPFLOW_TEMPORAL_TLS_SERVER_CA_CERT_PATH?: string;
  CPFLOW_TEMPORAL_TLS_CLIENT_CERT_PATH?: string;
  CPFLOW_TEMPORAL_TLS_CLIENT_KEY_PATH?: string;
  CPFLOW_DB_TLS?: string;
  CPFLOW_DB_TLS_CA?: string;
  CPFLOW_DB_TLS_CERT?: string;
  CPFLOW_DB_TLS_KEY?: string;
  CPFLOW_S3_TLS_CA?: string;
  /** Present only when CellProfiler has been installed with `npm run stack -- install-cellprofiler`. */
  CPFLOW_CELLPROFILER?: string;
}

export interface ServiceStatus {
  name: ServiceName;
  running: boolean;
  pid: number | null;
  ports: Record<string, number>;
  logFile: string;
}

function pidOf(state: StackState, name: ServiceName): number | null {
  return state[name].pid;
}

function mainPortOf(state: StackState, name: ServiceName): number {
  return state[name].port;
}

function portsOf(state: StackState, name: ServiceName): Record<string, number> {
  switch (name) {
    case 'temporal':
      return {
        ...(state.secure && state.temporal.tlsPort !== undefined ? { mtls: state.temporal.tlsPort } : {}),
        grpc: state.temporal.port,
        ui: state.temporal.uiPort,
        http: state.temporal.httpPort,
        metrics: state.temporal.metricsPort,
      };
    case 'mariadb':
      return { sql: state.mariadb.port };
    case 'minio':
      return { s3: state.minio.port, console: state.minio.consolePort };
  }
}

function generateSecret(bytes: number): string {
  return crypto.randomBytes(bytes).toString('hex');
}

function listenHostOf(state: StackState, name: ServiceName): string {
  return name === 'temporal' ? temporalDevHost(state) : state.host;
}

async function isServiceRunning(state: StackState, name: ServiceName): Promise<boolean> {
  const running = isProcessAlive(pidOf(state, name), expectedCommand(name)) && (await isPortAnswering(mainPortOf(state, name), 500, listenHostOf(state, name)));
  if (!running || name !== 'temporal' || !state.secure) return running;
  return (
    isProcessAlive(state.temporal.proxyPid, PROXY_COMMAND) &&
    state.temporal.tlsPort !== undefined &&
    (await isPortAnswering(state.temporal.tlsPort, 500, state.host))
  );
}

/** How the stack runs: plain or secure, and on which address. */
export interface StackMode {
  secure: boolean;
  host: string;
}

/**
 * Keep each remembered port if the service holding it is ours and running, or if it is free;
 * otherwise pick a new one. A brand-new state gets fresh ports and credentials.
 */
async function planState(previous: StackState | undefined, binaries: Binaries, mode: StackMode): Promise<StackState> {
  const taken = new Set<number>();
  const keepOrPick = async (remembered: number | undefined, ownedAndRunning: boolean): Promise<number> => {
    if (remembered !== undefined && !taken.has(remembered) && (ownedAndRunning || (await isPortFree(remembered)))) {
      taken.add(remembered);
      return remembered;
    }
    const port = await findFreePort(taken);
    taken.add(port);
    return port;
  };
  // A change of mode or address restarts everything (ensureStackUp stops the old services first).
  const sameMode = previous !== undefined && previous.secure === mode.secure && previous.host === mode.host;
  const running = async (name: ServiceName) => (previous === undefined || !sameMode ? false : isServiceRunning(previous, name));
  const [temporalRunning, mariadbRunning, minioRunning] = await Promise.all([running('temporal'), running('mariadb'), running('minio')]);
  return {
    version: 1,
    binaries,
    secure: mode.secure,
    host: mode.host,
    temporal: {
      port: await keepOrPick(previous?.temporal.port, temporalRunning),
      uiPort: await keepOrPick(previous?.temporal.uiPort, temporalRunning),
      httpPort: await keepOrPick(previous?.temporal.httpPort, temporalRunning),
      metricsPort: await keepOrPick(previous?.temporal.metricsPort, temporalRunning),
      pid: temporalRunning ? (previous?.temporal.pid ?? null) : null,
      tlsPort: mode.secure ? await keepOrPick(previous?.temporal.tlsPort, temporalRunning) : previous?.temporal.tlsPort,
      proxyPid: temporalRunning && mode.secure ? (previous?.temporal.proxyPid ?? null) : null,
    },
    mariadb: {
      port: await keepOrPick(previous?.mariadb.port, mariadbRunning),
      pid: mariadbRunning ? (previous?.mariadb.pid ?? null) : null,
      password: previous?.mariadb.password ?? generateSecret(16),
    },
    minio: {
      port: await keepOrPick(previous?.minio.port, minioRunning),
      consolePort: await keepOrPick(previous?.minio.consolePort, minioRunning),
      pid: minioRunning ? (previous?.minio.pid ?? null) : null,
      accessKey: previous?.minio.accessKey ?? `cpflow${generateSecret(6)}`,
      secretKey: previous?.minio.secretKey ?? generateSecret(20),
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Orchestration

const displayName: Record<ServiceName, string> = { temporal: 'Temporal', mariadb: 'MariaDB', minio: 'MinIO' };

function makeLogger(quiet: boolean | undefined): Logger {
  return quiet ? () => undefined : (line: string) => process.stderr.write(`[stack] ${line}\n`);
}

/** Start `name` unless it is already running and answering; records the pid in the state file. */
async function ensureServiceRunning(paths: StackPaths, state: StackState, name: ServiceName, log: Logger): Promise<void> {
  if (await isServiceRunning(state, name)) return;
  const stalePid = pidOf(state, name);
  if (isProcessAlive(stalePid, expectedCommand(name)) && stalePid !== null) {
    // Alive but not answering on its port: a hung daemon; replace it.
    log(`${displayName[name]} (pid ${stalePid}) is not answering; restarting it`);
    await stopProcess(stalePid, expectedCommand(name));
  }
  const started = Date.now();
  log(`starting ${displayName[name]}…`);
  const pid = await starters[name](paths, state);
  state[name].pid = pid;
  writeState(paths, state);
  log(`${displayName[name]} is up (pid ${pid}, port ${mainPortOf(state, name)}) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

async function prepareState(paths: StackPaths, log: Logger, requested?: Partial<StackMode>): Promise<StackState> {
  const previous = readState(paths);
  const mode: StackMode = {
    secure: requested?.secure ?? previous?.secure ?? false,
    host: requested?.host ?? previous?.host ?? HOST,
  };
  const installed = await ensureInstalled(paths, log, previous?.binaries);
  const binaries: Binaries = { ...installed, nginx: installed.nginx ?? previous?.binaries.nginx };
  if (mode.secure) binaries.nginx = await ensureNginx(cacheDir(), log);
  if (previous !== undefined && (previous.secure !== mode.secure || previous.host !== mode.host)) {
    log(`switching the stack to ${mode.secure ? 'secure' : 'plain'} on ${mode.host}: restarting its services`);
    await Promise.all(SERVICE_NAMES.map((name) => stopOne(paths, previous, name, log)));
  }
  const state = await planState(previous, binaries, mode);
  if (state.secure) await ensureCertificates(paths.tlsDir, state.host, log);
  writeState(paths, state);
  return state;
}

function envFromState(paths: StackPaths, state: StackState): StackEnv {
  const host = state.host;
  const env: StackEnv = {
    CPFLOW_TEMPORAL_ADDRESS: state.secure && state.temporal.tlsPort !== undefined ? `${host}:${state.temporal.tlsPort}` : `${host}:${state.temporal.port}`,
    CPFLOW_TEMPORAL_NAMESPACE: TEMPORAL_NAMESPACE,
    CPFLOW_TEMPORAL_UI_URL: `http://${temporalDevHost(state)}:${state.temporal.uiPort}`,
    CPFLOW_DB_HOST: host,
    CPFLOW_DB_PORT: String(state.mariadb.port),
    CPFLOW_DB_USER: DATABASE_USER,
    CPFLOW_DB_PASSWORD: state.mariadb.password,
    CPFLOW_DB_NAME: DATABASE_NAME,
    CPFLOW_S3_ENDPOINT: minioUrl(state),
    CPFLOW_S3_REGION: S3_REGION,
    CPFLOW_S3_ACCESS_KEY: state.minio.accessKey,
    CPFLOW_S3_SECRET_KEY: state.minio.secretKey,
    CPFLOW_TEMPORAL_CLI: state.binaries.temporal,
    CPFLOW_TEMPORAL_TEST_SERVER: state.binaries.temporalTestServer,
  };
  if (fs.existsSync(paths.cellprofilerExecutable)) env.CPFLOW_CELLPROFILER = paths.cellprofilerExecutable;
  if (state.secure) {
    const files = tlsFiles(paths.tlsDir);
    Object.assign(env, {
      CPFLOW_TEMPORAL_TLS_SERVER_CA_CERT_PATH: files.caCert,
      CPFLOW_TEMPORAL_TLS_CLIENT_CERT_PATH: files.clientCert,
      CPFLOW_TEMPORAL_TLS_CLIENT_KEY_PATH: files.clientKey,
      CPFLOW_DB_TLS: 'true',
      CPFLOW_DB_TLS_CA: files.caCert,
      CPFLOW_DB_TLS_CERT: files.clientCert,
      CPFLOW_DB_TLS_KEY: files.clientKey,
      CPFLOW_S3_TLS_CA: files.caCert,
    } satisfies Partial<StackEnv>);
  }
  return env;
}

/**
 * Install what is missing, start every service that is not running, and return the connection
 * settings. Safe to call from several processes at once (they take turns through a lock).
 */
export async function ensureStackUp(opts: { quiet?: boolean } & Partial<StackMode> = {}): Promise<StackEnv> {
  const paths = stackPaths();
  const log = makeLogger(opts.quiet);
  return withLock(paths.lockDir, 'stack operation', log, async () => {
    const state = await prepareState(paths, log, { secure: opts.secure ?? secureFromEnv(), host: opts.host });
    // Independent daemons: start them side by side to shorten a cold start.
    await Promise.all(SERVICE_NAMES.map((name) => ensureServiceRunning(paths, state, name, log)));
    writeState(paths, state);
    return envFromState(paths, state);
  });
}

/** CPFLOW_STACK_SECURE=1 (or true) asks `up` for the secure stack, like `--secure`; unset keeps the current mode. */
function secureFromEnv(): boolean | undefined {
  const value = process.env.CPFLOW_STACK_SECURE;
  if (value === undefined || value === '') return undefined;
  if (['1', 'true'].includes(value)) return true;
  if (['0', 'false'].includes(value)) return false;
  throw new StackError(`CPFLOW_STACK_SECURE=${JSON.stringify(value)}: expected 1/true or 0/false`);
}

/** Connection settings from the state file, without checking that the services run. */
export async function stackEnv(): Promise<StackEnv> {
  const paths = stackPaths();
  const state = readState(paths);
  if (state === undefined) throw new StackError(`no local stack in ${paths.root}; run "npm run stack -- up" first`);
  return envFromState(paths, state);
}

/** Start one service with the ports, data and credentials it had before (for fault drills). */
export async function startService(name: ServiceName, opts: { quiet?: boolean } = {}): Promise<void> {
  const paths = stackPaths();
  const log = makeLogger(opts.quiet);
  await withLock(paths.lockDir, 'stack operation', log, async () => {
    const state = await prepareState(paths, log);
    await ensureServiceRunning(paths, state, name, log);
  });
}

/** Stop one service (SIGTERM, SIGKILL after a grace period), keeping its data, ports and credentials. */
export async function stopService(name: ServiceName, opts: { quiet?: boolean; graceMs?: number } = {}): Promise<void> {
  const paths = stackPaths();
  const log = makeLogger(opts.quiet);
  await withLock(paths.lockDir, 'stack operation', log, async () => {
    const state = readState(paths);
    if (state === undefined) return;
    await stopOne(paths, state, name, log, opts.graceMs);
  });
}

async function stopOne(paths: StackPaths, state: StackState, name: ServiceName, log: Logger, graceMs?: number): Promise<void> {
  if (name === 'temporal' && state.temporal.proxyPid !== null) {
    if (isProcessAlive(state.temporal.proxyPid, PROXY_COMMAND)) await stopProcess(state.temporal.proxyPid, PROXY_COMMAND, graceMs);
    state.temporal.proxyPid = null;
  }
  const pid = pidOf(state, name);
  if (pid !== null && isProcessAlive(pid, expectedCommand(name))) {
    log(`stopping ${displayName[name]} (pid ${pid})…`);
    await stopProcess(pid, expectedCommand(name), graceMs);
  }
  state[name].pid = null;
  writeState(paths, state);
}

/** Stop every service; with `wipe`, also delete their data and the state file (installs are kept). */
export async function stopStack(opts: { wipe?: boolean; quiet?: boolean } = {}): Promise<void> {
  const paths = stackPaths();
  const log = makeLogger(opts.quiet);
  await withLock(paths.lockDir, 'stack operation', log, async () => {
    const state = readState(paths);
    if (state !== undefined) await Promise.all(SERVICE_NAMES.map((name) => stopOne(paths, state, name, log)));
    if (opts.wipe) {
      for (const directory of [paths.temporalDir, paths.mariadbDir, paths.minioDir, paths.tlsDir]) fs.rmSync(directory, { recursive: true, force: true });
      fs.rmSync(paths.stateFile, { force: true });
      log(`wiped data under ${paths.root} (installed binaries kept)`);
    }
  });
}

export async function stackStatus(): Promise<ServiceStatus[]> {
  const paths = stackPaths();
  const state = readState(paths);
  return Promise.all(
    SERVICE_NAMES.map(async (name) => ({
      name,
      running: state !== undefined && (await isServiceRunning(state, name)),
      pid: state?.[name].pid ?? null,
      ports: state !== undefined ? portsOf(state, name) : {},
      logFile: logFileOf(paths, name),
    })),
  );
}

export { stackPaths, cacheDir } from './state';
