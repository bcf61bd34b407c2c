/**
 * Small process and network helpers for the local stack: detached daemons, liveness, free ports,
 * polling for readiness, and a cross-process lock so two `up`s never race each other.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { StackError } from './state';

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * True when `pid` is alive and (on Linux) its command line mentions `expectedCommand`, so a pid
 * recycled by an unrelated process after a reboot is not mistaken for our service.
 */
export function isProcessAlive(pid: number | null, expectedCommand?: string): boolean {
  if (pid === null) return false;
  try {
    process.kill(pid, 0);
  } catch (error) {
    // EPERM means it exists but belongs to someone else: certainly not a service we started.
    return false;
  }
  if (expectedCommand === undefined) return true;
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 3 is the state; a zombie has exited and only awaits its parent.
    if (/^\d+ \(.*\) Z/.test(stat)) return false;
    const commandLine = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return commandLine.includes(expectedCommand);
  } catch {
    return true; // no /proc (not Linux): trust kill(0)
  }
}

/** True when something accepts TCP connections on host:port (127.0.0.1 unless given) within `timeoutMs`. */
export function isPortAnswering(port: number, timeoutMs = 500, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const finish = (answer: boolean) => {
      socket.destroy();
      resolve(answer);
    };
    socket.setTimeout(timeoutMs, () => finish(false));
    socket.once('connect', () => finish(true));
    socket.once('error', () => finish(false));
  });
}

/** True when we could bind host:port (127.0.0.1 unless given) right now. */
export function isPortFree(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen({ host, port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/** A port the kernel considers free now, avoiding ports already handed out in this run. */
export async function findFreePort(avoid: ReadonlySet<number> = new Set()): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = net.createServer();
      server.once('error', reject);
      server.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
        const address = server.address();
        const chosen = typeof address === 'object' && address !== null ? address.port : 0;
        server.close(() => resolve(chosen));
      });
    });
    if (port !== 0 && !avoid.has(port)) return port;
  }
  throw new StackError('could not find a free TCP port on 127.0.0.1');
}

/**
 * Start a daemon that outlives this process: own process group, stdout and stderr appended to
 * `logFile`, and unref'd so Node can exit while it keeps running.
 */
export function spawnDetached(
  command: string,
  args: readonly string[],
  logFile: string,
  env: NodeJS.ProcessEnv = process.env,
): number {
  fs.mkdirSync(path.dirname(logFile), { recursive: true });
  const logFd = fs.openSync(logFile, 'a');
  fs.writeSync(logFd, `\n--- ${new Date().toISOString()} starting: ${command} ${args.join(' ')}\n`);
  try {
    const child = spawn(command, args, { detached: true, stdio: ['ignore', logFd, logFd], env });
    if (child.pid === undefined) throw new StackError(`could not start ${command} (see ${logFile})`);
    child.unref();
    return child.pid;
  } finally {
    fs.closeSync(logFd);
  }
}

/** Poll `probe` until it returns true, the process dies, or the timeout passes. */
export async function waitUntilReady(options: {
  service: string;
  logFile: string;
  timeoutMs: number;
  pid: number;
  expectedCommand: string;
  probe: () => Promise<boolean>;
}): Promise<void> {
  const deadline = Date.now() + options.timeoutMs;
  let delay = 50;
  while (Date.now() < deadline) {
    if (await options.probe()) return;
    if (!isProcessAlive(options.pid, options.expectedCommand)) {
      throw new StackError(`${options.service} exited during start-up; see ${options.logFile}\n${tailOfFile(options.logFile)}`);
    }
    await sleep(delay);
    delay = Math.min(delay * 2, 500);
  }
  throw new StackError(
    `${options.service} did not become ready within ${Math.round(options.timeoutMs / 1000)} s; see ${options.logFile}\n${tailOfFile(options.logFile)}`,
  );
}

export function tailOfFile(file: string, lines = 15): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).map((line) => `  | ${line}`).join('\n');
  } catch {
    return '';
  }
}

/**
 * SIGTERM the daemon's process group (it was started detached, so it leads its own group), then
 * SIGKILL whatever is still alive after the grace period.
 */
export async function stopProcess(pid: number, expectedCommand: string, graceMs = 10_000): Promise<void> {
  if (!isProcessAlive(pid, expectedCommand)) return;
  const signalGroup = (signal: NodeJS.Signals) => {
    try {
      process.kill(-pid, signal);
    } catch {
      try {
        process.kill(pid, signal);
      } catch {
        // already gone
      }
    }
  };
  signalGroup('SIGTERM');
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (!isProcessAlive(pid, expectedCommand)) return;
    await sleep(100);
  }
  signalGroup('SIGKILL');
  while (isProcessAlive(pid, expectedCommand)) await sleep(50);
}

/**
 * A lock held across processes: mkdir is atomic, and the owner's pid inside lets a later run break
 * a lock left behind by a crashed one.
 */
export async function withLock<T>(
  lockDir: string,
  what: string,
  announce: (line: string) => void,
  action: () => Promise<T>,
  timeoutMs = 20 * 60_000,
): Promise<T> {
  fs.mkdirSync(path.dirname(lockDir), { recursive: true });
  const ownerFile = path.join(lockDir, 'pid');
  const deadline = Date.now() + timeoutMs;
  let announced = false;
  for (;;) {
    try {
      fs.mkdirSync(lockDir);
      fs.writeFileSync(ownerFile, String(process.pid));
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      let owner = NaN;
      try {
        owner = Number(fs.readFileSync(ownerFile, 'utf8'));
      } catch {
        // the owner is between mkdir and writing its pid; treat as alive
      }
      if (Number.isInteger(owner) && owner > 0 && !isProcessAlive(owner)) {
        fs.rmSync(lockDir, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) throw new StackError(`timed out waiting for ${what} (lock ${lockDir} held by pid ${owner})`);
      if (!announced) {
        announce(`waiting for another ${what} (pid ${owner}) to finish…`);
        announced = true;
      }
      await sleep(250);
    }
  }
  try {
    return await action();
  } finally {
    fs.rmSync(lockDir, { recursive: true, force: true });
  }
}
