import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { closeDb, db, getExperiment, type ExperimentRow } from '../../core/db';
import { isTerminal } from '../../core/model';
import { getBytes, listObjects, parseS3Uri } from '../../core/s3';
import { parse } from 'csv-parse/sync';

/**
 * Helpers for integration tests against the real local stack that `npm test` starts. Workers and
 * watchers run as separate processes, as in production, so tests can kill and restart them.
 */

export const REPO_ROOT = path.resolve(__dirname, '..', '..');
const TSX_CLI = require.resolve('tsx/cli');

export function requireStack(): void {
  if (!process.env.CPFLOW_DB_PORT || !process.env.CPFLOW_TEMPORAL_ADDRESS || !process.env.CPFLOW_S3_ENDPOINT) {
    throw new Error('integration tests need the local stack: run them through `npm test` (test/run-tests.ts)');
  }
}

export const uniqueName = (prefix: string): string =>
  `${prefix}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `cpflow-${prefix}-`));
}

export interface ManagedProcess {
  child: ChildProcess;
  output: () => string;
  /** Resolves when the process prints a line matching `pattern`. */
  waitFor: (pattern: RegExp, timeoutMs?: number) => Promise<void>;
  stop: (signal?: NodeJS.Signals) => Promise<number | null>;
}

/**
 * Run a TypeScript entry point of this repo (e.g. `workers/all.ts`) as ONE node process
 * (`node --import tsx`): the tsx CLI would put a relaying parent in between, so a signal sent in a
 * test would not reach the worker the way Kubernetes' SIGTERM does.
 */
export function startProcess(
  entry: string,
  args: string[] = [],
  env: NodeJS.ProcessEnv = {},
  opts: { logDir?: string } = {},
): ManagedProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO_ROOT, entry), ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return manageProcess(child, entry, `${path.basename(entry, '.ts')}${args[0] ? `-${args[0]}` : ''}`, opts);
}

/**
 * Every child process started through this harness in this jest worker and not yet seen to exit.
 * A beforeAll that fails half-way (`[workers, watcher] = await Promise.all(...)` when the workers do
 * not start) never hands the other process to its afterAll; left running, such a starter polls the
 * shared database and starts the next suites' experiments (it broke runtime-command.test.ts once).
 * The set lives on `process`, which a worker's test files share (each file gets fresh modules), so
 * each file kills what earlier files left behind, and the worker kills the rest when it exits.
 */
const leftover = (() => {
  const holder = process as NodeJS.Process & { cpflowTestChildren?: Set<ChildProcess> };
  if (!holder.cpflowTestChildren) {
    const children = new Set<ChildProcess>();
    holder.cpflowTestChildren = children;
    process.once('exit', () => {
      for (const child of children) child.kill('SIGKILL');
    });
  }
  return holder.cpflowTestChildren;
})();
for (const child of leftover) child.kill('SIGKILL');
leftover.clear();

/** Output capture, waitFor and stop for any child process (also one started some other way than startProcess). */
export function manageProcess(child: ChildProcess, entry: string, logName: string, opts: { logDir?: string } = {}): ManagedProcess {
  leftover.add(child);
  child.once('exit', () => leftover.delete(child));
  // Optionally also to a file, to read after a failed run (the in-memory copy is trimmed).
  const log = opts.logDir ? fs.createWriteStream(path.join(opts.logDir, `${logName}-${child.pid ?? 'nopid'}.log`)) : undefined;
  let out = '';
  const listeners = new Set<() => void>();
  const onData = (b: Buffer): void => {
    log?.write(b);
    out += b.toString();
    if (out.length > 2_000_000) out = out.slice(-1_000_000);
    for (const l of listeners) l();
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code, signal) => {
      log?.end(`\n[exit code ${code} signal ${signal} at ${new Date().toISOString()}]\n`);
      resolve(code);
    }),
  );
  return {
    child,
    output: () => out,
    waitFor: (pattern, timeoutMs = 60_000) =>
      new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (pattern.test(out)) {
            listeners.delete(check);
            clearTimeout(timer);
            resolve();
          }
        };
        const timer = setTimeout(() => {
          listeners.delete(check);
          reject(new Error(`${entry}: no output matching ${pattern} within ${timeoutMs} ms; output:\n${out.slice(-3000)}`));
        }, timeoutMs);
        listeners.add(check);
        void exited.then(() => {
          if (!pattern.test(out)) {
            listeners.delete(check);
            clearTimeout(timer);
            reject(new Error(`${entry} exited before printing ${pattern}; output:\n${out.slice(-3000)}`));
          }
        });
        check();
      }),
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

export async function startWorkers(env: NodeJS.ProcessEnv = {}, entry = 'workers/all.ts'): Promise<ManagedProcess> {
  const p = startProcess(entry, [], env);
  await p.waitFor(/cpflow workers running/, 120_000);
  return p;
}

export async function startWatcher(env: NodeJS.ProcessEnv = {}): Promise<ManagedProcess> {
  const p = startProcess('starter/cli.ts', ['watch', '--interval', '500'], env);
  await p.waitFor(/polling MariaDB/, 60_000);
  return p;
}

/** Run the CLI to completion and return its exit code and output. */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 120_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [TSX_CLI, path.join(REPO_ROOT, 'starter/cli.ts'), ...args], {
      cwd: REPO_ROOT,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`cpflow ${args.join(' ')} timed out; stderr: ${stderr}`));
    }, timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export async function waitForExperiment(
  experimentId: number,
  until: (e: ExperimentRow) => boolean = (e) => isTerminal(e.status),
  timeoutMs = 300_000,
): Promise<ExperimentRow> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const e = await getExperiment(await db(), experimentId);
    if (e && until(e)) return e;
    if (Date.now() > deadline) throw new Error(`experiment ${experimentId} still ${e?.status ?? 'missing'} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 500));
  }
}

export async function s3Keys(uriPrefix: string): Promise<string[]> {
  const { bucket, key } = parseS3Uri(uriPrefix);
  const keys: string[] = [];
  for await (const o of listObjects(bucket, key)) keys.push(o.key);
  return keys.sort();
}

export async function readCsvFromS3(uri: string): Promise<Array<Record<string, string>>> {
  const { bucket, key } = parseS3Uri(uri);
  return parse((await getBytes(bucket, key)).toString('utf8'), { columns: true, skip_empty_lines: true }) as Array<
    Record<string, string>
  >;
}

export async function teardown(...processes: Array<ManagedProcess | undefined>): Promise<void> {
  await Promise.all(processes.map((p) => p?.stop('SIGTERM')));
  await closeDb();
}
