import os from 'node:os';
import fs from 'node:fs';
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { optionalTsToMs } from '@temporalio/common/lib/time';
import { claimSubmittedExperiment, db, getExperiment, imageSetCounts, skippedSetCount } from '../../core/db';
import { isTerminal, type DispatchOptions } from '../../core/model';
import { temporalConfig } from '../../core/config';
import { startExperimentWorkflow } from '../../starter/experiment-workflows';
import { ANALYSIS_QUEUES, TASK_QUEUES, workflowIdFor } from '../../core/model/names';

/**
 * Running one registered experiment through Temporal for the benchmark, and reading back what it
 * cost: wall time from the workflow's start to the end of reduceExperiment, the analysis phase alone,
 * the reduce activity's duration, and the history length of every execution it made (the parent's
 * continue-as-new runs and every chunk child).
 */

export interface ExecutionStat {
  workflowId: string;
  runId: string;
  status: string;
  historyLength: number;
}

export interface ExperimentTiming {
  experimentId: number;
  workflowId: string;
  /** Whether this benchmark started the workflow (false: another watcher claimed the row first). */
  startedByBench: boolean;
  /** The experiment's dispatch settings, as registered. */
  tuning: DispatchOptions;
  status: string;
  done: number;
  failed: number;
  /** Workflow start → reduceExperiment completed. */
  wallSeconds: number;
  /** Submit (the benchmark claims the registered experiment and starts its workflow) → summary.csv written. */
  endToEndSeconds: number;
  /** Workflow start → reduceExperiment scheduled (every set analysed and mirrored). */
  analysisSeconds: number;
  /** reduceExperiment scheduled → completed. */
  reduceSeconds: number;
  executions: number;
  parentRuns: number;
  maxHistoryLength: number;
  maxHistoryExecution: string;
  /** Where an analysis activity's time goes, from the history of the experiment's first chunk. */
  chunkLatency: ChunkLatency | undefined;
  executionStats: ExecutionStat[];
}

export interface ChunkLatency {
  workflowId: string;
  activities: number;
  /** Scheduled → started: waiting for a free slot on a worker (queueing, task dispatch). */
  meanQueueMs: number;
  /** Started → completed: the activity itself (S3 transfers, engine, uploads). */
  meanRunMs: number;
  workflowTasks: number;
  /** Workflow task scheduled → completed: how quickly the chunk reacts to each completion. */
  meanWorkflowTaskMs: number;
  historyLength: number;
}

/** Claim the submitted row and start its workflow as the watcher would, then wait for the end. */
export async function runExperiment(
  client: Client,
  experimentId: number,
  opts: {
    timeoutMs: number;
    label: string;
    log: (line: string) => void;
    /** A kill drill expects sets that the killed worker finished to be skipped on their retry. */
    allowSkipped?: boolean;
  },
): Promise<ExperimentTiming> {
  const pool = await db();
  const workflowId = workflowIdFor(experimentId);
  const submittedAt = Date.now();
  const claimed = await claimSubmittedExperiment(pool, experimentId, workflowId);
  if (claimed) {
    const e = await getExperiment(pool, experimentId);
    if (!e) throw new Error(`experiment ${experimentId} vanished`);
    await startExperimentWorkflow(client, e);
  } else {
    opts.log(`  warning: another watcher claimed experiment ${experimentId} first; measuring its run `);
  }

  const started = Date.now();
  let lastReport = started;
  let lastDone = 0;
  for (;;) {
    // A database hiccup (another session's fault drill, say) only delays our polling.
    const e = await getExperiment(pool, experimentId).catch((err: unknown) => {
      opts.log(`  ${opts.label}: polling MariaDB failed (${err instanceof Error ? err.message.split('\n')[0] : String(err)}); retrying`);
      return undefined;
    });
    if (e && isTerminal(e.status) && e.finished_at !== null) break;
    if (Date.now() - started > opts.timeoutMs) throw new Error(`${opts.label}: experiment ${experimentId} still ${e?.status} after ${opts.timeoutMs / 1000} s`);
    if (e && Date.now() - lastReport >= 20_000) {
      const counts = await imageSetCounts(pool, experimentId);
      const rate = (counts.done + counts.failed - lastDone) / ((Date.now() - lastReport) / 1000);
      opts.log(
        `  ${opts.label}: ${e?.status} ${counts.done + counts.failed}/${counts.total} sets mirrored ` +
          `(${rate.toFixed(1)}/s over the last ${((Date.now() - lastReport) / 1000).toFixed(0)} s), ${((Date.now() - started) / 1000).toFixed(0)} s elapsed`,
      );
      lastDone = counts.done + counts.failed;
      lastReport = Date.now();
    }
    await new Promise((r) => setTimeout(r, 500));
  }
  const finished = await getExperiment(pool, experimentId);
  if (!finished) throw new Error(`experiment ${experimentId} vanished`);
  // A set skipped by its provenance was never analysed: a figure that counts it measures nothing.
  const skipped = opts.allowSkipped ? 0 : await skippedSetCount(pool, experimentId);
  if (skipped > 0) {
    throw new Error(
      `${opts.label}: ${skipped} of experiment ${experimentId}'s sets were skipped as already done (outputs left in the bench bucket by an earlier run?); its figures would not measure analysis`,
    );
  }
  // The final sync lands just before the workflow closes; wait for the close so histories are complete.
  await client.workflow.getHandle(workflowId).result().catch(() => undefined);

  const executionStats = await listExecutions(client, workflowId);
  const parentRuns = executionStats.filter((x) => x.workflowId === workflowId);
  const firstStart = await firstRunStartMs(client, workflowId);
  const reduce = await reduceActivityTimes(client, workflowId);
  const firstChunk = executionStats
    .filter((x) => x.workflowId.startsWith(`${workflowId}-chunk-`))
    .sort((a, b) => Number(a.workflowId.split('-').pop()) - Number(b.workflowId.split('-').pop()))[0];
  const chunkLatency = firstChunk ? await chunkLatencyOf(client, firstChunk) : undefined;
  const max = executionStats.reduce<ExecutionStat | undefined>((m, x) => (!m || x.historyLength > m.historyLength ? x : m), undefined);
  return {
    experimentId,
    workflowId,
    startedByBench: claimed,
    tuning: finished.dispatch_options,
    status: finished.status,
    done: finished.done_sets,
    failed: finished.failed_sets,
    wallSeconds: (reduce.completedMs - firstStart) / 1000,
    // reduceExperiment completes once summary.csv and the report are in S3 (server clock, same host).
    endToEndSeconds: (reduce.completedMs - submittedAt) / 1000,
    analysisSeconds: (reduce.scheduledMs - firstStart) / 1000,
    reduceSeconds: (reduce.completedMs - reduce.scheduledMs) / 1000,
    executions: executionStats.length,
    parentRuns: parentRuns.length,
    maxHistoryLength: max?.historyLength ?? 0,
    maxHistoryExecution: max ? `${max.workflowId} (run ${max.runId.slice(0, 8)})` : '-',
    chunkLatency,
    executionStats,
  };
}

/**
 * Every execution of the experiment: all runs of the parent (continue-as-new included) and every
 * chunk child (ids `<parent>-chunk-<first set id>`), each with its history length.
 */
export async function listExecutions(client: Client, workflowId: string): Promise<ExecutionStat[]> {
  const stats: ExecutionStat[] = [];
  const query = `WorkflowId = '${workflowId}' OR WorkflowId STARTS_WITH '${workflowId}-chunk-'`;
  try {
    for await (const w of client.workflow.list({ query })) {
      stats.push({ workflowId: w.workflowId, runId: w.runId, status: w.status.name, historyLength: w.historyLength });
    }
    return stats;
  } catch {
    // Older visibility stores lack STARTS_WITH: walk the parent's runs and describe each child they started.
  }
  stats.length = 0;
  const seen = new Set<string>();
  for await (const w of client.workflow.list({ query: `WorkflowId = '${workflowId}'` })) {
    stats.push({ workflowId: w.workflowId, runId: w.runId, status: w.status.name, historyLength: w.historyLength });
    const history = await client.workflow.getHandle(workflowId, w.runId).fetchHistory();
    for (const ev of history.events ?? []) {
      const child = ev.childWorkflowExecutionStartedEventAttributes?.workflowExecution;
      if (!child?.workflowId || !child.runId || seen.has(child.runId)) continue;
      seen.add(child.runId);
      const d = await client.workflow.getHandle(child.workflowId, child.runId).describe();
      stats.push({ workflowId: d.workflowId, runId: d.runId, status: d.status.name, historyLength: d.historyLength });
    }
  }
  return stats;
}

async function firstRunStartMs(client: Client, workflowId: string): Promise<number> {
  let first: number | undefined;
  for await (const w of client.workflow.list({ query: `WorkflowId = '${workflowId}'` })) {
    const t = w.startTime.getTime();
    first = first === undefined ? t : Math.min(first, t);
  }
  if (first === undefined) throw new Error(`no execution of ${workflowId} found`);
  return first;
}

/** When the (last) reduceExperiment activity of the parent's final run was scheduled and completed. */
async function reduceActivityTimes(client: Client, workflowId: string): Promise<{ scheduledMs: number; completedMs: number }> {
  const history = await client.workflow.getHandle(workflowId).fetchHistory();
  const scheduled = new Map<string, number>();
  let result: { scheduledMs: number; completedMs: number } | undefined;
  for (const ev of history.events ?? []) {
    const s = ev.activityTaskScheduledEventAttributes;
    if (s?.activityType?.name === 'reduceExperiment' && ev.eventId != null) {
      scheduled.set(String(ev.eventId), optionalTsToMs(ev.eventTime) ?? 0);
    }
    const c = ev.activityTaskCompletedEventAttributes;
    if (c?.scheduledEventId != null) {
      const at = scheduled.get(String(c.scheduledEventId));
      if (at !== undefined) result = { scheduledMs: at, completedMs: optionalTsToMs(ev.eventTime) ?? 0 };
    }
  }
  if (!result) throw new Error(`${workflowId}: no completed reduceExperiment activity in its final run`);
  return result;
}

/**
 * Live worker processes other than ours polling cpflow's task queues on this host: they would take
 * some of the benchmark's tasks (and with another engine), so the report names them.
 */
export async function foreignPollers(client: Client, ownPids: Set<number>): Promise<string[]> {
  const found = new Set<string>();
  const host = os.hostname();
  for (const name of new Set([...Object.values(TASK_QUEUES), ...Object.values(ANALYSIS_QUEUES)])) {
    for (const type of [
      temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
      temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    ]) {
      const res = await client.workflowService.describeTaskQueue({
        namespace: temporalConfig().CPFLOW_TEMPORAL_NAMESPACE,
        taskQueue: { name },
        taskQueueType: type,
      });
      for (const p of res.pollers ?? []) {
        const m = /^(\d+)@(.+)$/.exec(p.identity ?? '');
        if (!m?.[1]) continue;
        const pid = Number(m[1]);
        const alive = m[2] !== host || fs.existsSync(`/proc/${pid}`);
        if (!ownPids.has(pid) && alive) found.add(`${p.identity} on ${name}`);
      }
    }
  }
  return [...found];
}

const mean = (xs: number[]): number => (xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length);

async function chunkLatencyOf(client: Client, chunk: ExecutionStat): Promise<ChunkLatency> {
  const history = await client.workflow.getHandle(chunk.workflowId, chunk.runId).fetchHistory();
  const at = new Map<string, number>();
  const queue: number[] = [];
  const run: number[] = [];
  const wft: number[] = [];
  for (const ev of history.events ?? []) {
    const id = String(ev.eventId);
    const t = optionalTsToMs(ev.eventTime) ?? 0;
    at.set(id, t);
    const started = ev.activityTaskStartedEventAttributes;
    if (started?.scheduledEventId != null) queue.push(t - (at.get(String(started.scheduledEventId)) ?? t));
    const completed = ev.activityTaskCompletedEventAttributes;
    if (completed?.startedEventId != null) run.push(t - (at.get(String(completed.startedEventId)) ?? t));
    const wftDone = ev.workflowTaskCompletedEventAttributes;
    if (wftDone?.scheduledEventId != null) wft.push(t - (at.get(String(wftDone.scheduledEventId)) ?? t));
  }
  return {
    workflowId: chunk.workflowId,
    activities: run.length,
    meanQueueMs: Math.round(mean(queue)),
    meanRunMs: Math.round(mean(run)),
    workflowTasks: wft.length,
    meanWorkflowTaskMs: Math.round(mean(wft)),
    historyLength: chunk.historyLength,
  };
}

/**
 * Terminate executions an interrupted benchmark left running in its namespace: they would otherwise
 * take the next run's worker slots. The namespace is the benchmark's alone (isolation.ts).
 */
export async function terminateLeftovers(client: Client, log: (line: string) => void): Promise<number> {
  let n = 0;
  for await (const w of client.workflow.list({ query: `ExecutionStatus = 'Running'` })) {
    await client.workflow
      .getHandle(w.workflowId, w.runId)
      .terminate('left over from an interrupted benchmark run')
      .catch(() => undefined);
    n++;
  }
  if (n > 0) log(`  terminated ${n} executions left over from an interrupted benchmark run`);
  return n;
}
