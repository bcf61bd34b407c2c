import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { readState, stackPaths } from '../../deploy/local/state';

/**
 * Child processes for the benchmark. Each is started as `node --require tsx/cjs <entry>`, not through
 * the tsx CLI (which forks a second node process), so the pid we hold is the process doing the work
 * and its /proc/<pid>/status VmHWM is that process's own peak resident set.
 */

export const REPO_ROOT = path.resolve(__dirname, '..', '..');

export interface BenchProcess {
  name: string;
  pid: number;
  child: ChildProcess;
  output: () => string;
  /** Highest VmHWM seen so far (bytes), sampled every second and at stop. */
  peakRssBytes: () => number | undefined;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves with the exit code. */
  stop: (graceMs?: number) => Promise<number | null>;
  exited: Promise<number | null>;
}

/** Peak resident set size (VmHWM) of a live process, in bytes; undefined once it has exited. */
export function readPeakRss(pid: number): number | undefined {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /^VmHWM:\s+(\d+)\s+kB$/m.exec(status);
    return m?.[1] ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

export function startTsProcess(name: string, entry: string, args: string[], env: NodeJS.ProcessEnv, nodeArgs: string[] = []): BenchProcess {
  const child = spawn(process.execPath, [...nodeArgs, '--require', 'tsx/cjs', path.join(REPO_ROOT, entry), ...args], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (child.pid === undefined) throw new Error(`could not start ${entry}`);
  const pid = child.pid;
  let out = '';
  const onData = (b: Buffer): void => {
    out += b.toString();
    if (out.length > 1_000_000) out = out.slice(-500_000);
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  let peak: number | undefined;
  const sample = (): void => {
    const now = readPeakRss(pid);
    if (now !== undefined) peak = Math.max(peak ?? 0, now);
  };
  const sampler = setInterval(sample, 1_000);
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      clearInterval(sampler);
      resolve(code);
    }),
  );
  return {
    name,
    pid,
    child,
    output: () => out,
    peakRssBytes: () => {
      sample();
      return peak;
    },
    exited,
    stop: async (graceMs = 30_000) => {
      sample();
      if (child.exitCode !== null || child.signalCode !== null) return exited;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

export async function waitForOutput(p: BenchProcess, pattern: RegExp, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pattern.test(p.output())) {
    if (p.child.exitCode !== null) throw new Error(`${p.name} exited (${p.child.exitCode}) before ready:\n${p.output().slice(-2000)}`);
    if (Date.now() > deadline) throw new Error(`${p.name} not ready within ${timeoutMs} ms:\n${p.output().slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

export type PoolName = 'workflow' | 'cellprofiler' | 'reduce';

/** One worker pool in its own process (workers/<pool>.ts), ready once it polls. */
export async function startPool(pool: PoolName, env: NodeJS.ProcessEnv = {}, nodeArgs: string[] = []): Promise<BenchProcess> {
  const p = startTsProcess(`${pool} worker`, `workers/${pool}.ts`, [], { CPFLOW_SHUTDOWN_GRACE_SECONDS: '5', ...env }, nodeArgs);
  await waitForOutput(p, /cpflow workers running/, 180_000);
  return p;
}

/** A fresh scratch directory under the OS temp dir. */
export function scratchDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `cpflow-bench-${prefix}-`));
}

/** CPU time (user + system, seconds) of every process on the host, keyed by pid, with its command name. */
export type CpuSnapshot = Map<number, { comm: string; seconds: number }>;

const CLOCK_TICKS_PER_SECOND = 100; // USER_HZ on Linux

export function cpuSnapshot(): CpuSnapshot {
  const snap: CpuSnapshot = new Map();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      // comm is in parentheses and may contain spaces; the fields after it are space separated.
      const close = stat.lastIndexOf(')');
      const comm = stat.slice(stat.indexOf('(') + 1, close);
      const fields = stat.slice(close + 2).split(' ');
      const utime = Number(fields[11]);
      const stime = Number(fields[12]);
      snap.set(Number(entry), { comm, seconds: (utime + stime) / CLOCK_TICKS_PER_SECOND });
    } catch {
      // The process ended while we read /proc.
    }
  }
  return snap;
}

/**
 * CPU seconds spent between two snapshots, grouped: our own processes by the name we gave them,
 * everything else by command name (temporal, mariadbd, minio, …). Busiest first.
 * Groups under `minSeconds` are left out and the rest rounded to 0.1 s (for display); 0 keeps every group, unrounded (for totals).
 */
export function cpuDelta(before: CpuSnapshot, after: CpuSnapshot, named: Map<number, string>, minSeconds = 0.5): Array<{ name: string; cpuSeconds: number }> {
  const groups = new Map<string, number>();
  for (const [pid, a] of after) {
    const b = before.get(pid);
    const spent = a.seconds - (b && b.comm === a.comm ? b.seconds : 0);
    if (spent <= 0) continue;
    const name = named.get(pid) ?? a.comm;
    groups.set(name, (groups.get(name) ?? 0) + spent);
  }
  return [...groups.entries()]
    .map(([name, cpuSeconds]) => ({ name, cpuSeconds: minSeconds > 0 ? Math.round(cpuSeconds * 10) / 10 : cpuSeconds }))
    .filter((g) => g.cpuSeconds >= minSeconds && g.cpuSeconds > 0)
    .sort((x, y) => y.cpuSeconds - x.cpuSeconds);
}

/**
 * One benchmark at a time per stack: two runs would share the namespace's task queues (each one's
 * workers serving the other's tasks) and the start-up clean-up of one would end the other's runs.
 * Returns a release function; a lock left by a dead process is taken over.
 */
export function lockStack(cacheDir: string): () => void {
  const file = path.join(cacheDir, 'bench.lock');
  fs.mkdirSync(cacheDir, { recursive: true });
  for (;;) {
    try {
      fs.writeFileSync(file, String(process.pid), { flag: 'wx' });
      return () => fs.rmSync(file, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number(fs.readFileSync(file, 'utf8'));
      if (Number.isInteger(holder) && holder > 0 && fs.existsSync(`/proc/${holder}`)) {
        throw new Error(`another benchmark (pid ${holder}) is running on the stack in ${cacheDir}; wait for it or use the other stack (--private-stack)`);
      }
      fs.rmSync(file, { force: true });
    }
  }
}

/**
 * The service processes of the stack the benchmark runs on (from its state file), named so CPU
 * accounting counts them and not the Temporal, MinIO or MariaDB of another stack on the same host.
 */
export function stackServicePids(): Map<number, string> {
  const state = readState(stackPaths());
  const named = new Map<number, string>();
  if (!state) return named;
  if (state.temporal.pid) named.set(state.temporal.pid, 'temporal');
  if (state.minio.pid) named.set(state.minio.pid, 'minio');
  if (state.mariadb.pid) named.set(state.mariadb.pid, 'mariadbd');
  return named;
}

/**
 * cpuDelta restricted to the named processes; everything else on the host is summed into one
 * `other processes on this host` entry, so a figure never includes another session's services.
 */
export function ownCpu(before: CpuSnapshot, after: CpuSnapshot, named: Map<number, string>): Array<{ name: string; cpuSeconds: number }> {
  const names = new Set(named.values());
  const all = cpuDelta(before, after, named);
  const own = all.filter((g) => names.has(g.name));
  const other = all.filter((g) => !names.has(g.name)).reduce((sum, g) => sum + g.cpuSeconds, 0);
  return other > 0 ? [...own, { name: 'other processes on this host', cpuSeconds: Math.round(other * 10) / 10 }] : own;
}

/** Busy CPU-seconds of the whole machine since boot (every core), from /proc/stat. */
export function machineBusySeconds(): number {
  const fields = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0]?.trim().split(/\s+/).slice(1, 9).map(Number) ?? [];
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = fields;
  return (user + nice + system + irq + softirq + steal) / 100; // USER_HZ
}

/**
 * Wait until the machine is quiet before a measurement. After a large run the services keep working
 * for minutes (MinIO's scanner and deferred deletes, MariaDB's purge, Temporal's clean-up), and that
 * CPU would land on whichever side of a ratio runs next. Quiet: fewer than `busyCores` cores busy over
 * a 3 s window. Gives up after `maxSeconds` and says so (the figure is then taken on a busy machine).
 */
export async function waitForQuiet(opts: { busyCores?: number; maxSeconds?: number } = {}): Promise<{ waitedSeconds: number; busyCores: number; quiet: boolean }> {
  const threshold = opts.busyCores ?? 0.15;
  const started = Date.now();
  for (;;) {
    const before = machineBusySeconds();
    await new Promise((r) => setTimeout(r, 3_000));
    const busyCores = (machineBusySeconds() - before) / 3;
    const waitedSeconds = (Date.now() - started) / 1000;
    if (busyCores < threshold) return { waitedSeconds, busyCores, quiet: true };
    if (waitedSeconds >= (opts.maxSeconds ?? 300)) return { waitedSeconds, busyCores, quiet: false };
  }
}
