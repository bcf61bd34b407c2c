import fs from 'node:fs';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { db, getExperiment, imageSetCounts } from '../../core/db';
import { getBytes, layout } from '../../core/s3';
import { runExperiment } from './experiment-run';
import { registerNoopExperiment } from './fixtures';
import { descendants, ensureRabbitMqInstalled, groupPids, installPeerVenv, killGroup, peerCommand, peerDbAccount, startPeerWorker, startRabbitMq, type PeerEnv, type PeerPool, type RabbitMq } from './peer';
import { cpuDelta, cpuSnapshot, stackServicePids, type BenchProcess, type CpuSnapshot } from './processes';
import { refuseForeignPollers, WorkerSet } from './workers';

/**
 * (vii) cpflow's no-op path against the classic Celery + RabbitMQ design (test/bench/peer/), on the
 * same MinIO and MariaDB, same registered image sets, same per-set I/O, run alternately A B A B A B so
 * both see the same machine; each run's end-to-end time (start → summary.csv), the medians and their
 * ratio, and each side's CPU-seconds per set by process. Then a kill -9 of a worker mid-run for both
 * (the peer with acks_late, then with Celery's defaults), counting lost and duplicated sets.
 */

export interface SideBySideOptions {
  sets: number;
  runs: number;
  noopSlots: number;
  window?: number;
  peerWorkers: number;
  /** Processes (prefork) or threads per peer worker. */
  peerConcurrency: number;
  peerPool: PeerPool;
  drillSets: number;
  cacheDir: string;
  scratch: string;
}

export interface CpuGroup {
  name: string;
  cpuSeconds: number;
}

export interface SideRun {
  side: 'cpflow' | 'peer';
  run: number;
  experimentId: number;
  sets: number;
  done: number;
  seconds: number;
  setsPerSecond: number;
  /** CPU seconds during the run, by process group, only the processes of this side. */
  cpu: CpuGroup[];
  cpuSecondsPerSet: number;
}

export interface DrillResult {
  side: string;
  sets: number;
  killedAtDone: number;
  finished: boolean;
  seconds: number;
  lost: number;
  duplicated: number;
  note: string;
}

export interface SideBySideResult {
  runs: SideRun[];
  medianCpflow: number;
  medianPeer: number;
  ratio: number;
  cpuPerSet: { cpflow: Record<string, number>; peer: Record<string, number> };
  summariesIdentical: boolean;
  drills: DrillResult[];
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/**
 * CPU of this side's processes only: its own workers and the services it uses, all by pid (other
 * sessions' Temporal, MinIO and MariaDB on the same host share the command names).
 */
function sideCpu(before: CpuSnapshot, after: CpuSnapshot, named: Map<number, string>, side: 'cpflow' | 'peer'): CpuGroup[] {
  const services = stackServicePids();
  const uses = side === 'cpflow' ? ['temporal', 'minio', 'mariadbd'] : ['minio', 'mariadbd'];
  const all = new Map([...named, ...[...services].filter(([, name]) => uses.includes(name))]);
  const names = new Set(all.values());
  // Every process of the side counts, however little it spent (the display threshold would drop a
  // worker's or MariaDB's half second per run and flatter the side with more small processes).
  return cpuDelta(before, after, all, 0).filter((g) => names.has(g.name));
}

async function doneCount(experimentId: number): Promise<number> {
  return (await imageSetCounts(await db(), experimentId)).done;
}

function duplicatesIn(runLog: string): number {
  if (!fs.existsSync(runLog)) return 0;
  const seen = new Map<string, number>();
  for (const key of fs.readFileSync(runLog, 'utf8').split('\n')) if (key) seen.set(key, (seen.get(key) ?? 0) + 1);
  return [...seen.values()].filter((n) => n > 1).length;
}

async function waitForDone(experimentId: number, atLeast: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const n = await doneCount(experimentId);
    if (n >= atLeast || Date.now() > deadline) return n;
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The peer's run: enqueue, then wait for its reduce to mark the experiment done, or for progress to stop. */
async function runPeer(python: string, env: PeerEnv, experimentId: number, stallMs: number, log: (l: string) => void): Promise<{ finished: boolean; seconds: number }> {
  const t0 = Date.now();
  await peerCommand(python, ['enqueue', String(experimentId)], env);
  let last = -1;
  let lastChange = Date.now();
  for (;;) {
    const e = await getExperiment(await db(), experimentId);
    if (e?.status === 'done' && e.started_at && e.finished_at) return { finished: true, seconds: (e.finished_at.getTime() - e.started_at.getTime()) / 1000 };
    const n = await doneCount(experimentId);
    if (n !== last) {
      last = n;
      lastChange = Date.now();
    } else if (Date.now() - lastChange > stallMs) {
      log(`  peer: no progress for ${stallMs / 1000} s at ${n} done sets; the chord has not fired`);
      return { finished: false, seconds: (Date.now() - t0) / 1000 };
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function startPeerWorkers(celery: string, o: SideBySideOptions, env: PeerEnv, tag: string): Promise<BenchProcess[]> {
  return Promise.all(Array.from({ length: o.peerWorkers }, (_, i) => startPeerWorker(celery, `${tag}${i + 1}`, o.peerConcurrency, env, o.peerPool)));
}

/** RabbitMQ's processes: the server script and its Erlang VM (beam.smp), epmd and helpers, all its descendants. */
function rabbitPids(rabbit: RabbitMq): Map<number, string> {
  return new Map(descendants(rabbit.pid).map((pid) => [pid, 'RabbitMQ']));
}

/** The peer's worker pids, prefork children included (they appear after start-up). */
function peerPids(workers: BenchProcess[]): Map<number, string> {
  return new Map(workers.flatMap((w) => groupPids(w.pid)).map((pid) => [pid, 'peer workers (python)']));
}

export async function sideBySide(client: Client, o: SideBySideOptions, log: (line: string) => void): Promise<SideBySideResult> {
  ensureRabbitMqInstalled(log);
  const { python, celery } = await installPeerVenv(o.cacheDir, log);
  const rabbit: RabbitMq = await startRabbitMq(path.join(o.cacheDir, 'bench-rabbitmq'), log);
  const runs: SideRun[] = [];
  const drills: DrillResult[] = [];
  let summariesIdentical = false;
  try {
    const peerEnv: PeerEnv = { brokerUrl: rabbit.url, acksLate: false, db: await peerDbAccount() };
    await peerCommand(python, ['purge'], peerEnv);
    const cpflowWorkers = await WorkerSet.start({ cellprofiler: { CPFLOW_ANALYZE_SLOTS: String(o.noopSlots), CPFLOW_ENGINE_OVERRIDE: 'noop' } });
    let peerWorkers: BenchProcess[];
    try {
      await refuseForeignPollers(client, cpflowWorkers);
      peerWorkers = await startPeerWorkers(celery, o, peerEnv, 'w');
    } catch (err) {
      // Nothing of this section may outlive it: a no-op worker left polling would serve later runs.
      await cpflowWorkers.stop();
      throw err;
    }
    try {
      const comparedSummaries: { cpflow?: number; peer?: number } = {};
      for (let run = 1; run <= o.runs; run++) {
        // A: cpflow
        const a = await registerNoopExperiment(`side-cpflow-${run}-${Date.now()}`, o.sets, { window: o.window });
        let before = cpuSnapshot();
        const timing = await runExperiment(client, a.experimentId, { timeoutMs: Math.max(1_800_000, o.sets * 200), label: `cpflow run ${run}`, log });
        let cpu = sideCpu(before, cpuSnapshot(), cpflowWorkers.pids(), 'cpflow');
        runs.push(sideRun('cpflow', run, a.experimentId, o.sets, timing.done, timing.endToEndSeconds, cpu));
        log(`  (vii) cpflow run ${run}: ${o.sets} sets in ${timing.endToEndSeconds.toFixed(1)} s = ${(o.sets / timing.endToEndSeconds).toFixed(1)} sets/s`);
        comparedSummaries.cpflow = a.experimentId;
        // B: the peer
        const b = await registerNoopExperiment(`side-peer-${run}-${Date.now()}`, o.sets);
        before = cpuSnapshot();
        const peer = await runPeer(python, peerEnv, b.experimentId, 120_000, log);
        const named = new Map([...peerPids(peerWorkers), ...rabbitPids(rabbit)]);
        cpu = sideCpu(before, cpuSnapshot(), named, 'peer');
        runs.push(sideRun('peer', run, b.experimentId, o.sets, await doneCount(b.experimentId), peer.seconds, cpu));
        log(`  (vii) peer run ${run}: ${o.sets} sets in ${peer.seconds.toFixed(1)} s = ${(o.sets / peer.seconds).toFixed(1)} sets/s${peer.finished ? '' : ' (did not finish)'}`);
        comparedSummaries.peer = b.experimentId;
      }
      summariesIdentical = await sameSummaries(comparedSummaries.cpflow, comparedSummaries.peer);
    } finally {
      await cpflowWorkers.stop();
      await Promise.all(peerWorkers.map((w) => w.stop()));
    }

    // Kill drills: cpflow, then the peer with acks_late, then with Celery's defaults (which may hang).
    drills.push(await cpflowDrill(client, o, log));
    drills.push(await peerDrill(python, celery, rabbit, o, true, log));
    drills.push(await peerDrill(python, celery, rabbit, o, false, log));
  } finally {
    await rabbit.stop();
  }

  const cpflowRuns = runs.filter((r) => r.side === 'cpflow');
  const peerRuns = runs.filter((r) => r.side === 'peer');
  const medianCpflow = median(cpflowRuns.map((r) => r.setsPerSecond));
  const medianPeer = median(peerRuns.map((r) => r.setsPerSecond));
  return {
    runs,
    medianCpflow,
    medianPeer,
    ratio: medianCpflow / medianPeer,
    cpuPerSet: { cpflow: perSetByProcess(cpflowRuns), peer: perSetByProcess(peerRuns) },
    summariesIdentical,
    drills,
  };
}

function sideRun(side: 'cpflow' | 'peer', run: number, experimentId: number, sets: number, done: number, seconds: number, cpu: CpuGroup[]): SideRun {
  const total = cpu.reduce((s, g) => s + g.cpuSeconds, 0);
  return { side, run, experimentId, sets, done, seconds, setsPerSecond: sets / seconds, cpu, cpuSecondsPerSet: total / sets };
}

/** Median over runs of each process group's CPU-seconds per set, plus the total. */
function perSetByProcess(runs: SideRun[]): Record<string, number> {
  const names = new Set(runs.flatMap((r) => r.cpu.map((g) => g.name)));
  const out: Record<string, number> = {};
  for (const name of names) out[name] = median(runs.map((r) => (r.cpu.find((g) => g.name === name)?.cpuSeconds ?? 0) / r.sets));
  out.total = median(runs.map((r) => r.cpuSecondsPerSet));
  return out;
}

/** Both sides wrote the same summary.csv for the same image sets (same keys, metadata, counts, means). */
async function sameSummaries(cpflowId: number | undefined, peerId: number | undefined): Promise<boolean> {
  if (cpflowId === undefined || peerId === undefined) return false;
  const pool = await db();
  const [a, b] = await Promise.all([getExperiment(pool, cpflowId), getExperiment(pool, peerId)]);
  if (!a || !b) return false;
  const [x, y] = await Promise.all([
    getBytes(a.bucket, layout.results(cpflowId, 'summary.csv')),
    getBytes(b.bucket, layout.results(peerId, 'summary.csv')),
  ]);
  return x.toString('utf8') === y.toString('utf8');
}

async function cpflowDrill(client: Client, o: SideBySideOptions, log: (line: string) => void): Promise<DrillResult> {
  const runLog = path.join(o.scratch, `cpflow-drill-${Date.now()}.log`);
  const workers = await WorkerSet.start({
    cellprofiler: { CPFLOW_ANALYZE_SLOTS: String(o.noopSlots), CPFLOW_ENGINE_OVERRIDE: 'noop', CPFLOW_NOOP_RUN_LOG: runLog },
  });
  try {
    const reg = await registerNoopExperiment(`drill-cpflow-${Date.now()}`, o.drillSets, { window: o.window });
    const t0 = Date.now();
    const running = runExperiment(client, reg.experimentId, { timeoutMs: 1_800_000, label: 'cpflow kill drill', log, allowSkipped: true });
    const killedAtDone = await waitForDone(reg.experimentId, Math.floor(o.drillSets * 0.3), 600_000);
    const pid = workers.kill('cellprofiler');
    log(`  (vii) cpflow drill: kill -9 of the analysis worker (pid ${pid}) at ${killedAtDone}/${o.drillSets} done; it is restarted as a crashed pod would be`);
    const timing = await running;
    const e = await getExperiment(await db(), reg.experimentId);
    const done = e?.done_sets ?? 0;
    return {
      side: 'cpflow',
      sets: o.drillSets,
      killedAtDone,
      finished: timing.status === 'done',
      seconds: (Date.now() - t0) / 1000,
      lost: o.drillSets - done,
      duplicated: duplicatesIn(runLog),
      note: `status ${timing.status}`,
    };
  } finally {
    await workers.stop();
  }
}

async function peerDrill(
  python: string,
  celery: string,
  rabbit: RabbitMq,
  o: SideBySideOptions,
  acksLate: boolean,
  log: (line: string) => void,
): Promise<DrillResult> {
  const runLog = path.join(o.scratch, `peer-drill-${acksLate ? 'ackslate' : 'defaults'}-${Date.now()}.log`);
  const env: PeerEnv = { brokerUrl: rabbit.url, acksLate, runLog, db: await peerDbAccount() };
  await peerCommand(python, ['purge'], env);
  const workers = await startPeerWorkers(celery, o, env, acksLate ? 'late' : 'dflt');
  const label = `peer (${o.peerPool} pool, ${acksLate ? 'acks_late' : "Celery's defaults"})`;
  try {
    const reg = await registerNoopExperiment(`drill-peer-${acksLate ? 'late' : 'default'}-${Date.now()}`, o.drillSets);
    const t0 = Date.now();
    const running = runPeer(python, env, reg.experimentId, 60_000, log);
    const killedAtDone = await waitForDone(reg.experimentId, Math.floor(o.drillSets * 0.3), 600_000);
    const victim = workers[0]!;
    killGroup(victim.pid, 'SIGKILL');
    log(`  (vii) ${label} drill: kill -9 of a worker (pid ${victim.pid} and its pool) at ${killedAtDone}/${o.drillSets} done; a replacement starts`);
    workers.push(await startPeerWorker(celery, `${acksLate ? 'late' : 'dflt'}-replacement`, o.peerConcurrency, env, o.peerPool));
    const outcome = await running;
    const done = await doneCount(reg.experimentId);
    return {
      side: label,
      sets: o.drillSets,
      killedAtDone,
      finished: outcome.finished,
      seconds: (Date.now() - t0) / 1000,
      lost: o.drillSets - done,
      duplicated: duplicatesIn(runLog),
      note: outcome.finished ? 'chord fired' : 'chord never fired (no summary.csv)',
    };
  } finally {
    await Promise.all(workers.map((w) => w.stop(5_000)));
    await peerCommand(python, ['purge'], env).catch(() => undefined);
  }
}
