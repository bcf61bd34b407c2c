/**
 * Warm CellProfilers: CellProfiler's start-up (~2 s of imports and module discovery before the first
 * image set) paid once per engine slot instead of once per engine invocation.
 *
 * Each warm process is `warm_server.py` under the CellProfiler venv's python, headless, in its own
 * process group, bound to one pipeline (by content) and one set of plugin files (by sha256). It runs
 * requests one at a time through CellProfiler's own headless entry point with exactly the argument list
 * the CLI path would use, so it writes what the CLI writes (ExportToSpreadsheet tables, SaveImages
 * files, the done file) into the request's folders, and its log lines go through the same parser
 * (CellProfilerLog) and the same failure classification.
 *
 * Life cycle: started when the worker starts (prestart: bound to the first pipeline asked of it) or
 * on the first request for its pipeline; kept while idle for
 * CELLPROFILER_WARM_IDLE_SECONDS; replaced when a request needs another pipeline or other plugins
 * and no other process is free, when it crashed or was killed, after an uncaught exception, and when
 * its resident memory after a run exceeds CPFLOW_CELLPROFILER_WARM_MAX_RSS_MIB. Cancellation and the
 * engine time-out kill its process group, as they kill the CLI's. When the worker exits, its warm
 * processes are killed; a worker killed with SIGKILL leaves them to notice (they watch their parent).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { headlessEnv } from '../../../core/cellprofiler';
import { DEFAULTS } from '../../../core/model';
import { abortError, CellProfilerLog, type InvocationResult } from './invoke';

export const WARM_SERVER_SCRIPT = path.join(__dirname, 'warm_server.py');
const END_MARKER = '\x1fcpflow-warm-end';
const START_TAIL_LINES = 40;

export interface WarmSettings {
  /** The CellProfiler venv's python. */
  python: string;
  pluginsDir?: string;
  /** Resident memory above which a process is replaced after its run. */
  maxRssBytes: number;
}

interface DoneMessage {
  type: 'done';
  id: number;
  exitCode: number;
  rssBytes: number;
  restart: boolean;
}

interface ReadyMessage {
  type: 'ready';
  pid: number;
  seconds: number;
  rssBytes: number;
}

interface Pending {
  id: number;
  log: CellProfilerLog;
  markerSeen: boolean;
  done?: DoneMessage;
  settle: () => void;
}

/**
 * The key of a process a worker started before any request (WarmPool.prestart): the first request,
 * of whatever pipeline, takes it and binds it to its own key.
 */
export const UNBOUND = '(not bound to a pipeline yet)';

/** One warm CellProfiler process. */
export class WarmCellProfiler {
  private readonly child: ChildProcessWithoutNullStreams;
  private nextId = 1;
  private pending: Pending | undefined;
  /** Lines printed outside any request (start-up), for the error when it never gets ready. */
  private readonly startTail: string[] = [];
  private exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private readonly exitWaiters: Array<() => void> = [];
  readonly ready: Promise<ReadyMessage>;
  /** Resident memory after the last run (or at start-up). */
  rssBytes = 0;
  runs = 0;
  idleTimer: NodeJS.Timeout | undefined;

  /** Without a pipeline (prestarted), the server imports CellProfiler but no pipeline's modules yet. */
  constructor(
    public key: string,
    settings: WarmSettings,
    pipelinePath: string | undefined,
  ) {
    const args = [
      WARM_SERVER_SCRIPT,
      ...(pipelinePath ? ['--pipeline', pipelinePath] : []),
      ...(settings.pluginsDir ? ['--plugins-directory', settings.pluginsDir] : []),
    ];
    // -u: unbuffered, so every log line arrives as CellProfiler writes it. Own process group (detached).
    this.child = spawn(settings.python, ['-u', ...args], { detached: true, stdio: ['pipe', 'pipe', 'pipe'], env: headlessEnv() });
    live.add(this);
    let markReady: (m: ReadyMessage) => void = () => undefined;
    let failStart: (e: Error) => void = () => undefined;
    this.ready = new Promise<ReadyMessage>((resolve, reject) => {
      markReady = resolve;
      failStart = reject;
    });
    // A rejection nobody awaits yet (the process died between requests) must not crash the worker.
    this.ready.catch(() => undefined);

    readline.createInterface({ input: this.child.stderr, crlfDelay: Infinity }).on('line', (line) => this.onLogLine(line));
    readline.createInterface({ input: this.child.stdout, crlfDelay: Infinity }).on('line', (line) => {
      let message: ReadyMessage | DoneMessage;
      try {
        message = JSON.parse(line) as ReadyMessage | DoneMessage;
      } catch {
        return; // fd 1 is redirected in the server; nothing else should write here
      }
      if (message.type === 'ready') {
        this.rssBytes = message.rssBytes;
        markReady(message);
      } else if (message.type === 'done' && this.pending?.id === message.id) {
        this.pending.done = message;
        this.rssBytes = message.rssBytes;
        this.settleIfComplete();
      }
    });
    this.child.stdin.on('error', () => undefined); // EPIPE when it died: the exit handler reports it
    this.child.on('error', (err) => {
      this.startTail.push(`spawn failed: ${err.message}`);
      this.onExit(null, null);
    });
    this.child.on('exit', (code, signal) => this.onExit(code, signal));
    this.exitWaiters.push(() => {
      const tail = this.startTail.slice(-START_TAIL_LINES).join('\n');
      failStart(new Error(`exit ${this.exit?.code ?? 'none'}${this.exit?.signal ? `, ${this.exit.signal}` : ''}${tail ? `; last lines:\n${tail}` : ''}`));
    });
  }

  /**
   * While idle, a warm process must not keep a finished program (analyze-local) alive; while it works
   * for a caller, it must (nothing else may hold the event loop open).
   */
  hold(busy: boolean): void {
    const handles = [this.child, this.child.stdin, this.child.stdout, this.child.stderr] as unknown as Array<{ ref?: () => void; unref?: () => void }>;
    for (const handle of handles) {
      if (busy) handle.ref?.();
      else handle.unref?.();
    }
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get alive(): boolean {
    return this.exit === undefined;
  }

  private onLogLine(line: string): void {
    const pending = this.pending;
    if (pending && line === `${END_MARKER} ${pending.id}`) {
      pending.markerSeen = true;
      this.settleIfComplete();
      return;
    }
    if (pending) pending.log.line(line);
    else {
      this.startTail.push(line);
      if (this.startTail.length > START_TAIL_LINES) this.startTail.shift();
    }
  }

  private settleIfComplete(): void {
    if (this.pending?.markerSeen && this.pending.done) this.pending.settle();
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.exit) return;
    this.exit = { code, signal };
    live.delete(this);
    if (this.idleTimer) clearTimeout(this.idleTimer);
    for (const waiter of this.exitWaiters.splice(0)) waiter();
    this.pending?.settle();
  }

  /** SIGKILL to the whole process group (CellProfiler and anything it started). */
  kill(): void {
    if (this.child.pid === undefined || !this.alive) return;
    try {
      process.kill(-this.child.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
  }

  /** Resolves once the process has exited (after kill()). */
  exited(): Promise<void> {
    return this.exit ? Promise.resolve() : new Promise((resolve) => this.exitWaiters.push(resolve));
  }

  /**
   * One CellProfiler run with the CLI's `args`; its log lines go to `log`. Resolves with how the run
   * ended: the exit code CellProfiler's entry point returned, or the process's own exit (a crash) when
   * it died during the run.
   */
  async run(args: string[], log: CellProfilerLog): Promise<{ done?: DoneMessage; exit?: { code: number | null; signal: NodeJS.Signals | null } }> {
    if (!this.alive) return { exit: this.exit };
    if (this.pending) throw new Error('warm CellProfiler: one request at a time');
    const id = this.nextId++;
    const pending: Pending = { id, log, markerSeen: false, settle: () => undefined };
    const settled = new Promise<void>((resolve) => {
      pending.settle = resolve;
    });
    this.pending = pending;
    this.child.stdin.write(`${JSON.stringify({ id, args })}\n`);
    await settled;
    const done = pending.done;
    this.pending = undefined;
    this.runs += 1;
    return done && done.id === id ? { done } : { exit: this.exit };
  }
}

/** Every warm process of this Node process, killed when it exits. */
const live = new Set<WarmCellProfiler>();
process.once('exit', () => {
  for (const p of live) p.kill();
});

/**
 * The warm processes of one worker: at most `capacity` kept (one per engine slot); a request takes an
 * idle one with its pipeline, else starts one (replacing an idle one of another pipeline when the
 * pool is full). Concurrent requests beyond the capacity (not expected: the engine slots bound them)
 * get a process of their own, stopped after their run.
 */
export class WarmPool {
  private readonly idle: WarmCellProfiler[] = [];
  private readonly busy = new Set<WarmCellProfiler>();

  constructor(
    private readonly settings: WarmSettings,
    public capacity: number,
    private readonly idleMs: number = DEFAULTS.CELLPROFILER_WARM_IDLE_SECONDS * 1000,
  ) {}

  /** Processes alive now (idle and busy), for tests. */
  get size(): number {
    return this.idle.length + this.busy.size;
  }

  idleProcesses(): readonly WarmCellProfiler[] {
    return this.idle;
  }

  busyProcesses(): readonly WarmCellProfiler[] {
    return [...this.busy];
  }

  /**
   * Starts processes up to the capacity before any request (a worker starting), bound to no pipeline
   * yet, and resolves when they are ready: then no image set waits for CellProfiler's start-up, the
   * ~1.5 s a first request would otherwise pay on each slot. One that fails to start is left dead;
   * requests start their own as before.
   */
  async prestart(): Promise<number> {
    const started: WarmCellProfiler[] = [];
    while (this.idle.length + this.busy.size < this.capacity) {
      const p = new WarmCellProfiler(UNBOUND, this.settings, undefined);
      started.push(p);
      this.park(p);
      // Parked processes do not keep Node alive; one being awaited here must, or a worker with nothing
      // else pending yet would exit quietly in the middle of its start.
      p.hold(true);
    }
    const ready = await Promise.all(
      started.map((p) =>
        p.ready.then(
          () => true,
          () => false,
        ),
      ),
    );
    // Still idle (no request took it meanwhile): no longer holding Node alive.
    for (const p of started) if (this.idle.includes(p)) p.hold(false);
    return ready.filter(Boolean).length;
  }

  acquire(key: string, pipelinePath: string): WarmCellProfiler {
    let index = this.idle.findIndex((p) => p.key === key && p.alive);
    // Else a prestarted one, which becomes this pipeline's (the request loads it, as every request does).
    if (index < 0) index = this.idle.findIndex((p) => p.key === UNBOUND && p.alive);
    const found = index >= 0 ? this.idle.splice(index, 1)[0] : undefined;
    if (found?.idleTimer) clearTimeout(found.idleTimer);
    if (found) found.key = key;
    if (!found && this.idle.length > 0 && this.idle.length + this.busy.size >= this.capacity) {
      // Full: the idle process of another pipeline (or other plugins) makes room.
      this.idle.shift()?.kill();
    }
    const warm = found ?? new WarmCellProfiler(key, this.settings, pipelinePath);
    this.busy.add(warm);
    warm.hold(true);
    return warm;
  }

  /** Back to the pool after a run, or stopped: when told, when dead, too big, or beyond the capacity. */
  release(p: WarmCellProfiler, keep: boolean): void {
    this.busy.delete(p);
    for (let i = this.idle.length - 1; i >= 0; i--) if (!this.idle[i]?.alive) this.idle.splice(i, 1);
    const tooBig = p.rssBytes > this.settings.maxRssBytes;
    if (!keep || !p.alive || tooBig || this.idle.length + this.busy.size >= this.capacity) {
      p.kill();
      return;
    }
    this.park(p);
  }

  /** Idle in the pool, stopped after CELLPROFILER_WARM_IDLE_SECONDS unless a request takes it. */
  private park(p: WarmCellProfiler): void {
    p.idleTimer = setTimeout(() => {
      const i = this.idle.indexOf(p);
      if (i >= 0) this.idle.splice(i, 1);
      p.kill();
    }, this.idleMs);
    p.idleTimer.unref();
    p.hold(false);
    this.idle.push(p);
  }

  /** Stops every idle process (busy ones are stopped when released). */
  close(): void {
    for (const p of this.idle.splice(0)) p.kill();
  }
}

/**
 * One CellProfiler run in a warm process: the CLI path's invoke() with the start-up already paid.
 * Returns the same InvocationResult, so the caller classifies both paths with the same code.
 */
export async function invokeWarm(
  pool: WarmPool,
  key: string,
  pipelinePath: string,
  args: string[],
  setCount: number,
  timeoutMs: number,
  input: { signal?: AbortSignal; onProgress?: (detail: string) => void },
): Promise<InvocationResult> {
  if (input.signal?.aborted) throw abortError(input.signal);
  const log = new CellProfilerLog(setCount, input.onProgress);
  const result = log.result;
  const warm = pool.acquire(key, pipelinePath);
  let keep = true;
  let stopReason: Error | undefined;
  const stop = (reason: Error) => {
    stopReason ??= reason;
    keep = false;
    warm.kill();
  };
  const onAbort = () => stop(abortError(input.signal));
  input.signal?.addEventListener('abort', onAbort, { once: true });
  const timer = setTimeout(() => stop(new Error(`CellProfiler timed out after ${Math.round(timeoutMs / 1000)} s and was killed`)), timeoutMs);
  try {
    try {
      if (warm.runs === 0) input.onProgress?.('starting a warm CellProfiler');
      await warm.ready;
    } catch (err) {
      keep = false;
      if (stopReason) throw stopReason;
      // Like a CLI that could not be started: the machine's fault, retried.
      result.spawnError = `the warm CellProfiler (${WARM_SERVER_SCRIPT}) did not start: ${err instanceof Error ? err.message : String(err)}`;
      return result;
    }
    const ran = await warm.run(args, log);
    if (stopReason) throw stopReason;
    if (ran.done) {
      result.exitCode = ran.done.exitCode;
      if (ran.done.restart) keep = false;
    } else {
      // The process died during the run (killed by the OOM killer, a crash in native code).
      keep = false;
      result.exitCode = ran.exit?.code ?? undefined;
      result.signal = ran.exit?.signal ?? undefined;
    }
    return result;
  } finally {
    clearTimeout(timer);
    input.signal?.removeEventListener('abort', onAbort);
    pool.release(warm, keep);
    // Killed means gone: nothing of a cancelled or timed-out run outlives the call.
    if (stopReason) await warm.exited();
  }
}
