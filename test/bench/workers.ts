import fs from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { foreignPollers } from './experiment-run';
import { cpuSnapshot, ownCpu, stackServicePids, startPool, type BenchProcess, type PoolName } from './processes';

/** The benchmark's cpflow worker processes (moved out of bench.ts so other sections can start them). */

const log = (line: string): void => {
  process.stderr.write(`${line}\n`);
};
const stamp = (): string => new Date().toISOString().replace(/[:.]/g, '-');

export interface PoolReport {
  pool: PoolName;
  pid: number;
  peakRssBytes: number | undefined;
}

/**
 * Workers, one process per pool, so each one's peak RSS is its own. A worker that dies mid-run (some
 * other session's drill may kill it) is restarted and the restart is reported; its output goes to
 * `<out>/logs/` for the post-mortem.
 */
export class WorkerSet {
  /** Where worker CPU profiles go, when asked for (`--profile-workers`). */
  static profileDir: string | undefined;
  static logDir: string | undefined;

  private stopping = false;
  readonly restarts: string[] = [];
  private readonly retiredPeaks = new Map<PoolName, number>();

  private constructor(
    private readonly processes: Array<{ pool: PoolName; p: BenchProcess }>,
    private readonly env: Partial<Record<PoolName, NodeJS.ProcessEnv>>,
  ) {
    for (const entry of processes) this.watch(entry);
  }

  private static nodeArgsFor(pool: PoolName): string[] {
    return WorkerSet.profileDir ? ['--cpu-prof', `--cpu-prof-dir=${path.join(WorkerSet.profileDir, pool)}`] : [];
  }

  static async start(env: Partial<Record<PoolName, NodeJS.ProcessEnv>>): Promise<WorkerSet> {
    const pools: PoolName[] = ['workflow', 'cellprofiler', 'reduce'];
    const processes = await Promise.all(pools.map(async (pool) => ({ pool, p: await startPool(pool, env[pool] ?? {}, WorkerSet.nodeArgsFor(pool)) })));
    return new WorkerSet(processes, env);
  }

  private watch(entry: { pool: PoolName; p: BenchProcess }): void {
    void entry.p.exited.then(async (code) => {
      this.saveLog(entry);
      if (this.stopping) return;
      const peak = entry.p.peakRssBytes();
      if (peak !== undefined) this.retiredPeaks.set(entry.pool, Math.max(this.retiredPeaks.get(entry.pool) ?? 0, peak));
      const what = `${entry.pool} worker (pid ${entry.p.pid}) exited with ${code ?? entry.p.child.signalCode} mid-run; restarted`;
      log(`  warning: ${what}. Its last output:\n${entry.p.output().slice(-1500)}`);
      this.restarts.push(what);
      const p = await startPool(entry.pool, this.env[entry.pool] ?? {}, WorkerSet.nodeArgsFor(entry.pool));
      entry.p = p;
      this.watch(entry);
    });
  }

  private saveLog(entry: { pool: PoolName; p: BenchProcess }): void {
    if (!WorkerSet.logDir) return;
    fs.mkdirSync(WorkerSet.logDir, { recursive: true });
    fs.writeFileSync(path.join(WorkerSet.logDir, `${stamp()}-${entry.pool}-${entry.p.pid}.log`), entry.p.output());
  }

  /** kill -9 one pool's process (a drill); the watcher restarts it as after any crash. Returns its pid. */
  kill(pool: PoolName): number {
    const entry = this.processes.find((e) => e.pool === pool);
    if (!entry) throw new Error(`no ${pool} worker`);
    process.kill(entry.p.pid, 'SIGKILL');
    return entry.p.pid;
  }

  pids(): Map<number, string> {
    return new Map(this.processes.map(({ pool, p }) => [p.pid, `${pool} worker (node)`]));
  }

  async stop(): Promise<PoolReport[]> {
    this.stopping = true;
    const reports = this.processes.map(({ pool, p }) => {
      const now = p.peakRssBytes();
      const retired = this.retiredPeaks.get(pool);
      return { pool, pid: p.pid, peakRssBytes: retired !== undefined && now !== undefined ? Math.max(now, retired) : now };
    });
    await Promise.all(this.processes.map(({ p }) => p.stop()));
    return reports;
  }
}

/**
 * Other live workers on the benchmark's queues would take some of its tasks (maybe with another
 * engine) and their CPU would go uncounted: the figures would be wrong, so the run stops, naming them.
 * (A benchmark killed before it stopped its workers leaves such orphans.)
 */
export async function refuseForeignPollers(client: Client, workers: WorkerSet): Promise<void> {
  const foreign = await foreignPollers(client, new Set(workers.pids().keys()));
  if (foreign.length > 0) {
    throw new Error(
      `other workers poll the benchmark's task queues and would take its tasks: ${foreign.join('; ')}. ` +
        'Stop them (the number before @ is the pid on that host), or run with --private-stack.',
    );
  }
}

export async function withWorkers<T>(
  client: Client,
  env: Partial<Record<PoolName, NodeJS.ProcessEnv>>,
  work: () => Promise<T>,
): Promise<{ result: T; pools: PoolReport[]; cpu: Array<{ name: string; cpuSeconds: number }>; restarts: string[] }> {
  const workers = await WorkerSet.start(env);
  try {
    await refuseForeignPollers(client, workers);
    const before = cpuSnapshot();
    const result = await work();
    const cpu = ownCpu(before, cpuSnapshot(), new Map([...workers.pids(), ...stackServicePids()]));
    return { result, pools: await workers.stop(), cpu, restarts: workers.restarts };
  } catch (err) {
    await workers.stop();
    throw err;
  }
}

