import type { Client } from '@temporalio/client';
import {
  activeExperiments,
  claimSubmittedExperiment,
  db,
  getExperiment,
  maxImageSetId,
  releaseClaim,
  setExperimentStatus,
  submittedExperimentIds,
  type Db,
} from '../core/db';
import { workflowIdFor } from '../core/model';
import { imageSetsAddedSignal, sealedSignal } from '../workflows/progress';
import { startExperimentWorkflow, workflowStatus } from './experiment-workflows';

/**
 * The starter daemon: turns submitted rows in MariaDB (from `cpflow submit` or any lab system) into
 * ExperimentWorkflows. Several watchers may run at once: a conditional UPDATE claims each experiment
 * for exactly one of them, and the workflow id derives from the experiment id, so a start is never
 * doubled. It also repairs the gap a crashed watcher can leave (claimed, but no workflow) and tells
 * open experiments' workflows about image sets that other systems inserted.
 */

/** How long a fresh claim is left to the watcher that made it before another one steps in. */
const CLAIM_GRACE_MS = 30_000;

export interface WatchEvent {
  kind: 'started' | 'restarted' | 'signalled-added' | 'signalled-sealed' | 'marked-failed' | 'start-failed';
  experimentId: number;
  detail?: string;
}

export class Watcher {
  /** Highest image set id seen per open experiment, to signal only when rows were added. */
  private readonly lastSetId = new Map<number, number>();
  private readonly sealedSignalled = new Set<number>();

  constructor(
    private readonly client: Client,
    private readonly onEvent: (e: WatchEvent) => void = () => undefined,
  ) {}

  /** One pass: start what was submitted, then reconcile what is running. Returns what it did. */
  async tick(): Promise<WatchEvent[]> {
    const pool = await db();
    const events: WatchEvent[] = [];
    const emit = (e: WatchEvent): void => {
      events.push(e);
      this.onEvent(e);
    };
    for (const id of await submittedExperimentIds(pool)) {
      const workflowId = workflowIdFor(id);
      if (!(await claimSubmittedExperiment(pool, id, workflowId))) continue; // another watcher has it
      const e = await getExperiment(pool, id);
      if (!e) continue;
      try {
        await startExperimentWorkflow(this.client, e);
        emit({ kind: 'started', experimentId: id, detail: workflowId });
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        await releaseClaim(pool, id, `could not start workflow: ${message}`);
        emit({ kind: 'start-failed', experimentId: id, detail: message });
      }
    }
    await this.reconcile(pool, emit);
    return events;
  }

  private async reconcile(pool: Db, emit: (e: WatchEvent) => void): Promise<void> {
    for (const active of await activeExperiments(pool)) {
      const workflowId = active.workflow_id ?? workflowIdFor(active.id);
      const execution = await workflowStatus(this.client, workflowId);
      // A run that closed before the latest claim belongs to an earlier attempt (e.g. before `cpflow
      // retry`): the claiming watcher is about to start the new run, or died before it could.
      const previousRun =
        execution?.closeTime !== undefined && active.claimed_at !== null && execution.closeTime.getTime() < active.claimed_at.getTime();
      if (execution === undefined || previousRun) {
        if (previousRun && active.claimed_at && Date.now() - active.claimed_at.getTime() < CLAIM_GRACE_MS) continue;
        // Claimed by a watcher that died before starting the workflow: start it now.
        const e = await getExperiment(pool, active.id);
        if (!e) continue;
        await startExperimentWorkflow(this.client, e);
        emit({ kind: 'restarted', experimentId: active.id, detail: workflowId });
        continue;
      }
      const status = execution.status;
      if (status === 'RUNNING' || status === 'CONTINUED_AS_NEW') {
        await this.signalChanges(pool, active.id, active.sealed, workflowId, emit);
        continue;
      }
      if (status === 'COMPLETED') continue; // its final sync is in flight or just landed
      // Failed, terminated or timed out without writing a final state: say so in the lab's record.
      const fresh = await getExperiment(pool, active.id);
      if (fresh && (fresh.status === 'running' || fresh.status === 'reducing')) {
        await setExperimentStatus(pool, active.id, status === 'CANCELED' ? 'cancelled' : 'failed', {
          error: `workflow ${workflowId} ended ${status.toLowerCase()}`,
        });
        emit({ kind: 'marked-failed', experimentId: active.id, detail: status });
      }
    }
  }

  private async signalChanges(
    pool: Db,
    experimentId: number,
    sealed: boolean,
    workflowId: string,
    emit: (e: WatchEvent) => void,
  ): Promise<void> {
    const maxId = await maxImageSetId(pool, experimentId);
    const handle = this.client.workflow.getHandle(workflowId);
    const previous = this.lastSetId.get(experimentId);
    this.lastSetId.set(experimentId, maxId);
    if (previous !== undefined && maxId > previous) {
      await handle.signal(imageSetsAddedSignal);
      emit({ kind: 'signalled-added', experimentId, detail: `up to image set id ${maxId}` });
    }
    if (sealed && !this.sealedSignalled.has(experimentId)) {
      await handle.signal(sealedSignal);
      this.sealedSignalled.add(experimentId);
      emit({ kind: 'signalled-sealed', experimentId });
    }
  }

  /** Poll until `signal` aborts. Errors of one pass are reported and the next pass tries again. */
  /** Tick until aborted; `onTick` hears whether each pass worked (the health endpoint's readiness). */
  async run(intervalMs: number, signal: AbortSignal, onError: (err: unknown) => void, onTick?: (ok: boolean) => void): Promise<void> {
    while (!signal.aborted) {
      try {
        await this.tick();
        onTick?.(true);
      } catch (err) {
        onTick?.(false);
        onError(err);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, intervalMs);
        signal.addEventListener('abort', () => {
          clearTimeout(t);
          resolve();
        }, { once: true });
      });
    }
  }
}
