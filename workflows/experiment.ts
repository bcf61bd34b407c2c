import {
  CancellationScope,
  ParentClosePolicy,
  condition,
  continueAsNew,
  isCancellation,
  setCurrentDetails,
  setHandler,
  startChild,
  upsertSearchAttributes,
  workflowInfo,
  type ChildWorkflowHandle,
} from '@temporalio/workflow';
import type { ExperimentStatus } from '../activities/lib/db';
import { control, reduce } from './activities-proxy';
import { ImageSetChunkWorkflow } from './chunk';
import {
  imageSetsAddedSignal,
  progressQuery,
  sealedSignal,
  type ChunkResult,
  type ExperimentPhase,
  type ExperimentProgress,
} from './progress';
import { TASK_QUEUES } from './task-queues';

export interface ExperimentWorkflowInput {
  experimentId: number;
  /** Image sets in flight at once, across the experiment (default 16). */
  window?: number;
  /** Image sets per chunk child workflow (default 400: keeps each child far below 10,240 events). */
  chunkSize?: number;
  /** Chunk children running at once (default 2, so one chunk's tail overlaps the next one's start). */
  concurrentChunks?: number;
  batchSize?: number;
  /** Attempts an engine failure gets before its image sets are failed (outages retry without limit). */
  maxAttempts?: number;
  activityTimeoutMinutes?: number;
  /** Continue as new past this many history events (default 4,000; tests lower it). */
  historyEventsBudget?: number;
  /** Set false only where the server lacks cpflow's custom search attributes (e.g. the time-skipping test server). */
  searchAttributes?: boolean;
  /** State carried across continue-as-new. */
  carried?: CarriedState;
}

interface CarriedState {
  afterSetId: number;
  done: number;
  failed: number;
  skipped: number;
  total: number;
  sealed: boolean;
  runs: number;
  chunksStarted: number;
  recentFailures: ExperimentProgress['recentFailures'];
}

/** Continue as new well before Temporal's 10,240-event warning. */
const HISTORY_EVENTS_BUDGET = 4_000;
/** While an open experiment is idle, re-read the database this often in case a lab system sealed it. */
const OPEN_RECHECK = '1 minute';

/**
 * One run of an experiment: fan out chunk children over the pending image sets with a bounded
 * window, accept new sets while the experiment is open, reduce once it is sealed and every set has
 * ended, and mirror the final state into MariaDB.
 */
export async function ExperimentWorkflow(input: ExperimentWorkflowInput): Promise<ExperimentProgress> {
  const { experimentId } = input;
  const window = input.window ?? 16;
  const chunkSize = input.chunkSize ?? 400;
  const concurrentChunks = input.concurrentChunks ?? 2;
  const historyBudget = input.historyEventsBudget ?? HISTORY_EVENTS_BUDGET;
  const carried: CarriedState = input.carried ?? {
    afterSetId: 0,
    done: 0,
    failed: 0,
    skipped: 0,
    total: 0,
    sealed: true,
    runs: 0,
    chunksStarted: 0,
    recentFailures: [],
  };

  let phase: ExperimentPhase = 'starting';
  let running = 0;
  let newSetsHint = false;
  // Filled in by the first activity; handlers are registered before it so queries never miss.
  let plan: Awaited<ReturnType<typeof control.loadExperimentPlan>> = {
    experimentId,
    name: '',
    project: '',
    bucket: '',
    engine: 'builtin',
    status: 'running',
    sealed: carried.sealed,
    totalSets: carried.total,
    maxFailedFraction: 0.5,
  };

  const progress = (): ExperimentProgress => ({
    experimentId,
    phase,
    total: Math.max(carried.total, plan.totalSets),
    done: carried.done,
    failed: carried.failed,
    skipped: carried.skipped,
    running,
    sealed: carried.sealed,
    runsSoFar: carried.runs,
    recentFailures: carried.recentFailures,
  });
  const showProgress = (): void => {
    const p = progress();
    setCurrentDetails(
      `**${plan.project} / ${plan.name}** — ${p.phase}: ${p.done} done, ${p.failed} failed, ${p.running} running of ${p.total}` +
        (p.recentFailures.length ? `\n\nRecent failures:\n${p.recentFailures.map((f) => `- ${f.key} (${f.attempts} attempts): ${f.error}`).join('\n')}` : ''),
    );
  };
  setHandler(progressQuery, progress);
  setHandler(imageSetsAddedSignal, () => {
    newSetsHint = true;
  });
  setHandler(sealedSignal, () => {
    carried.sealed = true;
    newSetsHint = true;
  });
  const setStatusAttribute = (status: ExperimentStatus): void => {
    if (input.searchAttributes === false) return;
    upsertSearchAttributes({
      CpflowExperimentId: [String(experimentId)],
      CpflowProject: [plan.project],
      CpflowStatus: [status],
      CpflowImageSetCount: [Math.max(carried.total, plan.totalSets)],
    });
  };

  const children = new Map<string, { handle: Promise<ChildWorkflowHandle<typeof ImageSetChunkWorkflow>>; count: number }>();
  plan = await control.loadExperimentPlan(experimentId);
  if (!input.carried) carried.sealed = plan.sealed;

  try {
    if (!input.carried) {
      await control.syncExperimentStatus({ experimentId, status: 'running' });
    }
    setStatusAttribute('running');
    phase = 'analyzing';
    showProgress();

    let completedSinceWake = false;
    let exhausted = false;

    const absorb = (r: ChunkResult, count: number): void => {
      carried.done += r.done;
      carried.failed += r.failed;
      carried.skipped += r.skipped;
      running -= count;
      carried.recentFailures = [...r.failures, ...carried.recentFailures].slice(0, 20);
      completedSinceWake = true;
      showProgress();
    };

    for (;;) {
      // Bounded history: once the children have drained, carry the counts into a fresh run.
      if (children.size === 0 && workflowInfo().historyLength > historyBudget) {
        await continueAsNew<typeof ExperimentWorkflow>({ ...input, carried: { ...carried, runs: carried.runs + 1 } });
      }
      // Start chunk children up to the concurrency limit (none once over budget: they would be orphaned).
      while (children.size < concurrentChunks && !exhausted && workflowInfo().historyLength <= historyBudget) {
        const prepared = await control.prepareManifestChunks({
          experimentId,
          afterSetId: carried.afterSetId,
          chunkSize,
          maxChunks: concurrentChunks - children.size,
        });
        if (prepared.sealed) carried.sealed = true;
        if (prepared.chunks.length === 0) {
          exhausted = true;
          break;
        }
        for (const chunk of prepared.chunks) {
          // The window is shared among the chunks running at once; a chunk that runs alone (a small
          // experiment, or the last chunk once the others are done) gets all of it.
          const alone = children.size === 0 && prepared.chunks.length === 1 && chunk.count < chunkSize;
          const share = alone ? window : Math.max(1, Math.ceil(window / concurrentChunks));
          carried.afterSetId = chunk.lastSetId;
          carried.total += chunk.count;
          carried.chunksStarted++;
          running += chunk.count;
          const childId = `${workflowInfo().workflowId}-chunk-${chunk.firstSetId}`;
          const handle = startChild(ImageSetChunkWorkflow, {
            workflowId: childId,
            taskQueue: TASK_QUEUES.workflow,
            args: [
              {
                experimentId,
                bucket: plan.bucket,
                manifestKey: chunk.manifestKey,
                window: share,
                batchSize: input.batchSize ?? 1,
                maxAttempts: input.maxAttempts ?? 3,
                activityTimeoutMinutes: input.activityTimeoutMinutes ?? 120,
              },
            ],
            parentClosePolicy: ParentClosePolicy.REQUEST_CANCEL,
            staticSummary: `${chunk.count} image sets: ${chunk.firstKey} … ${chunk.lastKey}`,
          });
          children.set(childId, { handle, count: chunk.count });
          void handle
            .then((h) => h.result())
            .then(
              (r) => absorb(r, chunk.count),
              (err: unknown) => {
                // A chunk that itself failed (not its image sets, which it records) is counted failed here;
                // its sets stay pending in MariaDB, so `cpflow retry` picks them up.
                if (!isCancellation(err)) {
                  const error = err instanceof Error ? err.message : String(err);
                  absorb({ done: 0, failed: chunk.count, skipped: 0, failures: [{ key: childId, error, attempts: 1 }] }, chunk.count);
                }
              },
            )
            .finally(() => {
              children.delete(childId);
              completedSinceWake = true;
            });
        }
        showProgress();
      }

      if (children.size === 0 && exhausted) {
        if (carried.sealed) break;
        // Open experiment, nothing to do: wait for new image sets, the seal, or a periodic recheck.
        phase = 'waiting-for-images';
        showProgress();
        await condition(() => newSetsHint, OPEN_RECHECK);
        newSetsHint = false;
        exhausted = false;
        phase = 'analyzing';
        continue;
      }

      if (children.size === 0 && workflowInfo().historyLength > historyBudget) continue;
      completedSinceWake = false;
      await condition(() => completedSinceWake || (exhausted && newSetsHint && children.size < concurrentChunks));
      if (newSetsHint) {
        newSetsHint = false;
        exhausted = false;
      }
    }

    phase = 'reducing';
    showProgress();
    setStatusAttribute('reducing');
    await control.syncExperimentStatus({ experimentId, status: 'reducing' });
    const reduced = await reduce.reduceExperiment({ experimentId, workflowId: workflowInfo().workflowId });

    // Final status over ALL the experiment's sets (a retry run only re-ran the failed ones).
    const failedFraction = reduced.total === 0 ? 0 : reduced.failed / reduced.total;
    const status: ExperimentStatus =
      reduced.total > 0 && (reduced.failed === reduced.total || failedFraction > plan.maxFailedFraction)
        ? 'failed'
        : reduced.failed > 0
          ? 'done_with_failures'
          : 'done';
    await control.syncExperimentStatus({
      experimentId,
      status,
      error: status === 'failed' ? `${reduced.failed} of ${reduced.total} image sets failed` : null,
      summaryUri: reduced.summaryUri,
      reportUri: reduced.reportUri,
    });
    phase = 'finished';
    setStatusAttribute(status);
    showProgress();
    return progress();
  } catch (err) {
    if (isCancellation(err)) {
      phase = 'cancelled';
      await CancellationScope.nonCancellable(async () => {
        // Chunks cancel their activities, which kill their engines: only then is the experiment cancelled.
        await condition(() => children.size === 0);
        await control.syncExperimentStatus({ experimentId, status: 'cancelled', error: 'cancelled by request' });
      });
      setStatusAttribute('cancelled');
      showProgress();
    }
    throw err;
  }
}
