import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import execa from 'execa';
import { findFreePort, isPortAnswering } from '../../deploy/local/processes';
import { installPinnedVenv, pipInstall, runLogged, type Log } from '../../deploy/local/venv';
import { stackAdminEnv } from '../../deploy/local/services';
import { REPO_ROOT, type BenchProcess } from './processes';

/**
 * The benchmark's peer (issue 10): the classic Celery + RabbitMQ design in test/bench/peer/, in a
 * venv of its own built from PyPI (pinned), with RabbitMQ from Debian's packages started here on
 * 127.0.0.1 with its own node name, ports and data directory under the cache (never the system
 * service). See cpflow_peer.py for what each task does.
 */

export const PEER_DIR = path.join(REPO_ROOT, 'test', 'bench', 'peer');
const CELERY_VERSION = '5.5.3';

function requirementPins(): string[] {
  return fs
    .readFileSync(path.join(PEER_DIR, 'requirements.txt'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
}

/** `<cache>/celery-peer-venv` with the pinned requirements; returns its python. */
export async function installPeerVenv(cacheDir: string, log: Log): Promise<{ python: string; celery: string }> {
  const pins = requirementPins();
  const venv = path.join(cacheDir, 'celery-peer-venv');
  const installed = await installPinnedVenv(
    {
      label: 'Celery peer',
      venv,
      markerFile: 'cpflow-celery-peer.json',
      pins,
      expectedVersion: CELERY_VERSION,
      entryPoint: 'bin/celery',
      pythonMinors: { min: 9, max: 13 },
      installedVersion: async (celery) => (await execa(celery, ['--version'])).stdout.trim().split(/\s+/)[0] ?? '?',
      install: async (python, installLog) => {
        await pipInstall(python, ['--no-deps', ...pins], installLog);
        await runLogged(python, ['-m', 'pip', 'check'], installLog);
      },
      verify: async (celery) => {
        await execa(path.join(path.dirname(celery), 'python'), ['-c', 'import celery, boto3, pymysql, sqlalchemy, kombu']);
      },
    },
    log,
  );
  return { python: path.join(venv, 'bin', 'python'), celery: installed.entryPoint };
}

const RABBITMQ_SERVER = '/usr/lib/rabbitmq/bin/rabbitmq-server';

/** Debian's rabbitmq-server, installed when missing (root); its system service is never started. */
export function ensureRabbitMqInstalled(log: Log): void {
  if (fs.existsSync(RABBITMQ_SERVER)) return;
  if (process.getuid?.() !== 0) throw new Error('rabbitmq-server is not installed and we are not root (apt-get install rabbitmq-server)');
  log('installing Debian rabbitmq-server for the Celery peer …');
  const apt = (args: string[]): number | null =>
    spawnSync('apt-get', args, { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }).status;
  if (apt(['install', '-y', '--no-install-recommends', 'rabbitmq-server']) !== 0) {
    apt(['update']);
    if (apt(['install', '-y', '--no-install-recommends', 'rabbitmq-server']) !== 0) throw new Error('apt-get install rabbitmq-server failed');
  }
  // Debian's package may start its own service where an init system runs; the peer uses its own node.
  if (!fs.existsSync(RABBITMQ_SERVER)) throw new Error(`${RABBITMQ_SERVER} missing after installing rabbitmq-server`);
}

export interface RabbitMq {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/** A RabbitMQ node of our own: AMQP, Erlang distribution and epmd on free 127.0.0.1 ports, data under `dir`. */
export async function startRabbitMq(dir: string, log: Log): Promise<RabbitMq> {
  fs.rmSync(dir, { recursive: true, force: true });
  for (const sub of ['mnesia', 'log', 'home']) fs.mkdirSync(path.join(dir, sub), { recursive: true });
  const taken = new Set<number>();
  const port = async () => {
    const p = await findFreePort(taken);
    taken.add(p);
    return p;
  };
  const [amqp, dist, epmd] = [await port(), await port(), await port()];
  fs.writeFileSync(path.join(dir, 'rabbitmq.conf'), `listeners.tcp.default = 127.0.0.1:${amqp}\n`);
  fs.writeFileSync(path.join(dir, 'enabled_plugins'), '[].\n');
  const env = {
    ...process.env,
    HOME: path.join(dir, 'home'), // a fresh Erlang cookie of its own
    RABBITMQ_NODENAME: `cpflow-bench-${amqp}@localhost`,
    RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
    RABBITMQ_NODE_PORT: String(amqp),
    RABBITMQ_DIST_PORT: String(dist),
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}',
    ERL_EPMD_PORT: String(epmd),
    ERL_EPMD_ADDRESS: '127.0.0.1',
    RABBITMQ_MNESIA_BASE: path.join(dir, 'mnesia'),
    RABBITMQ_LOG_BASE: path.join(dir, 'log'),
    RABBITMQ_CONFIG_FILE: path.join(dir, 'rabbitmq'),
    RABBITMQ_ENABLED_PLUGINS_FILE: path.join(dir, 'enabled_plugins'),
    RABBITMQ_PID_FILE: path.join(dir, 'rabbitmq.pid'),
  };
  const out = fs.openSync(path.join(dir, 'server.log'), 'a');
  const child = spawn(RABBITMQ_SERVER, [], { cwd: dir, env, stdio: ['ignore', out, out] });
  if (child.pid === undefined) throw new Error('could not start rabbitmq-server');
  const deadline = Date.now() + 120_000;
  while (!(await isPortAnswering(amqp))) {
    if (child.exitCode !== null) throw new Error(`rabbitmq-server exited (${child.exitCode}); see ${path.join(dir, 'server.log')}`);
    if (Date.now() > deadline) throw new Error(`rabbitmq-server did not listen on ${amqp} within 120 s; see ${path.join(dir, 'server.log')}`);
    await new Promise((r) => setTimeout(r, 500));
  }
  log(`  RabbitMQ ${RABBITMQ_SERVER} up on 127.0.0.1:${amqp} (pid ${child.pid}, data ${dir})`);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    url: `amqp://guest:guest@127.0.0.1:${amqp}//`,
    pid: child.pid,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await exited;
      clearTimeout(timer);
      // The epmd this node started on its own port.
      spawnSync('epmd', ['-port', String(epmd), '-kill'], { stdio: 'ignore', env: { ...process.env, ERL_EPMD_PORT: String(epmd) } });
      fs.closeSync(out);
    },
  };
}

export interface PeerEnv {
  brokerUrl: string;
  acksLate: boolean;
  runLog?: string;
  /** The MariaDB account the peer connects with (its own tables need DDL: see peerDbAccount). */
  db: { CPFLOW_DB_USER: string; CPFLOW_DB_PASSWORD: string };
}

/**
 * The peer creates its result tables itself (Celery's database backend runs CREATE TABLE and
 * CREATE SEQUENCE on first use), which cpflow's runtime account may not do: it connects with the
 * local stack's migration account, as a lab's Celery app would own its tables.
 */
export async function peerDbAccount(): Promise<PeerEnv['db']> {
  const admin = await stackAdminEnv();
  return { CPFLOW_DB_USER: admin.CPFLOW_DB_MIGRATE_USER ?? '', CPFLOW_DB_PASSWORD: admin.CPFLOW_DB_MIGRATE_PASSWORD ?? '' };
}

function peerProcessEnv(e: PeerEnv): NodeJS.ProcessEnv {
  return {
    ...process.env,
    ...e.db,
    PEER_BROKER_URL: e.brokerUrl,
    PEER_ACKS_LATE: e.acksLate ? '1' : '0',
    ...(e.runLog ? { PEER_RUN_LOG: e.runLog } : {}),
    PYTHONDONTWRITEBYTECODE: '1',
  };
}

export type PeerPool = 'prefork' | 'threads';

/**
 * One Celery worker (its main process and, with prefork, its children) in a process group of its
 * own, ready once it logs that it is ready. `kill(-pid)` ends the whole worker, as a lost pod would.
 */
export async function startPeerWorker(celery: string, name: string, concurrency: number, e: PeerEnv, pool: PeerPool): Promise<BenchProcess> {
  const child = spawn(
    celery,
    ['-A', 'cpflow_peer', 'worker', '--pool', pool, '--concurrency', String(concurrency), '-n', `${name}@cpflow-peer`, '--loglevel', 'INFO', '--without-gossip', '--without-mingle', '--without-heartbeat'],
    { cwd: PEER_DIR, env: peerProcessEnv(e), stdio: ['ignore', 'pipe', 'pipe'], detached: true },
  );
  if (child.pid === undefined) throw new Error('could not start a celery worker');
  const pid = child.pid;
  let out = '';
  const onData = (b: Buffer): void => {
    out += b.toString();
    if (out.length > 500_000) out = out.slice(-250_000);
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const p: BenchProcess = {
    name: `peer worker ${name}`,
    pid,
    child,
    output: () => out,
    peakRssBytes: () => undefined,
    exited,
    stop: async (graceMs = 20_000) => {
      if (child.exitCode !== null || child.signalCode !== null) {
        killGroup(pid, 'SIGKILL'); // prefork children of a killed main process
        return exited;
      }
      killGroup(pid, 'SIGTERM');
      const timer = setTimeout(() => killGroup(pid, 'SIGKILL'), graceMs);
      const code = await exited;
      clearTimeout(timer);
      killGroup(pid, 'SIGKILL');
      return code;
    },
  };
  const deadline = Date.now() + 120_000;
  while (!/ ready\./.test(out)) {
    if (child.exitCode !== null) throw new Error(`celery worker ${name} exited (${child.exitCode}):\n${out.slice(-2000)}`);
    if (Date.now() > deadline) throw new Error(`celery worker ${name} not ready in 120 s:\n${out.slice(-2000)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return p;
}

/** Run `cpflow_peer.py <args>` to completion (enqueue an experiment, purge the queue). */
export async function peerCommand(python: string, args: string[], e: PeerEnv): Promise<string> {
  const r = await execa(python, [path.join(PEER_DIR, 'cpflow_peer.py'), ...args], { cwd: PEER_DIR, env: peerProcessEnv(e), reject: false });
  if (r.exitCode !== 0) throw new Error(`cpflow_peer.py ${args.join(' ')} failed (${r.exitCode}):\n${r.stderr.slice(-2000)}`);
  return r.stdout;
}

/** Signal a worker's whole process group (main process and prefork children); gone already is fine. */
export function killGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // the group has ended
  }
}

/** Every pid in the worker's process group (for CPU accounting of prefork children). */
export function groupPids(pid: number): number[] {
  const pids: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[2]) === pid) pids.push(Number(entry)); // field 5 (pgrp)
    } catch {
      // ended meanwhile
    }
  }
  return pids;
}

/** `pid` and every process below it (by parent pid), e.g. rabbitmq-server's beam.smp and epmd. */
export function descendants(pid: number): number[] {
  const parentOf = new Map<number, number>();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      parentOf.set(Number(entry), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // ended meanwhile
    }
  }
  const found = [pid];
  for (let i = 0; i < found.length; i++) for (const [child, parent] of parentOf) if (parent === found[i]) found.push(child);
  return found;
}
