import { CancellationScope, condition, continueAsNew, isCancellation, setHandler, workflowInfo } from '@temporalio/workflow';
import { DEFAULTS, finalStatus, type ExperimentPlan, type ExperimentProgress, type GroupFinished } from '../core/model';
import { control, reduce } from './activities-proxy';
import { profilesError, profilesStep } from './profiles-step';
import { ChunkChildren } from './chunk-children';
import { ExperimentRun, freshCarriedState, normalizeCarried, withStageDefaults, type CarriedState } from './experiment-run';
import { groupFinishedSignal, imageSetsAddedSignal, progressQuery, sealedSignal } from './progress';

export interface ExperimentWorkflowInput {
  experimentId: number;
  /** Continue as new past this many history events (default DEFAULTS.HISTORY_EVENTS_BUDGET; tests lower it). */
  historyEventsBudget?: number;
  /** Set false only where the server lacks cpflow's custom search attributes (e.g. the time-skipping test server). */
  searchAttributes?: boolean;
  /** State carried across continue-as-new. */
  carried?: CarriedState;
}

/**
 * One run of an experiment: fan out chunk children over the pending image sets with a bounded
 * window, stage by stage (a later stage's partition starts as soon as the earlier stage's group it
 * needs is done), accept new sets while the experiment is open, reduce once it is sealed and every
 * set has ended, and mirror the final state into MariaDB. Everything about the experiment (bucket,
 * engine, stages, dispatch settings) comes from the plan activity, read once per run.
 */
export async function ExperimentWorkflow(input: ExperimentWorkflowInput): Promise<ExperimentProgress> {
  const run = new ExperimentRun(input.experimentId, input.carried ? normalizeCarried(input.carried) : freshCarriedState(), input.searchAttributes !== false);
  const historyBudget = input.historyEventsBudget ?? DEFAULTS.HISTORY_EVENTS_BUDGET;
  let newSetsHint = false;
  // Handlers first, so no query or signal is missed while the plan is read.
  setHandler(progressQuery, () => run.progress());
  setHandler(imageSetsAddedSignal, () => {
    newSetsHint = true;
  });
  setHandler(sealedSignal, () => {
    run.carried.sealed = true;
    newSetsHint = true;
  });
  // Chunk children report groups that later stages wait for; none can arrive before the plan is read
  // (children start after it), but a report is never dropped.
  let children: ChunkChildren | undefined;
  const early: GroupFinished[] = [];
  setHandler(groupFinishedSignal, (g) => {
    if (children) children.report(g);
    else early.push(g);
  });

  const plan = withStageDefaults(await control.loadExperimentPlan(input.experimentId));
  run.plan = plan;
  if (!input.carried) run.carried.sealed = plan.sealed;
  const chunks = new ChunkChildren(run, plan);
  children = chunks;
  for (const g of early) chunks.report(g);
  const withinBudget = (): boolean => workflowInfo().historyLength <= historyBudget;

  try {
    if (!input.carried) await control.syncExperimentStatus({ experimentId: plan.experimentId, status: 'running' });
    run.markStatus('running');
    run.enter('analyzing');
    await chunks.initialise();

    for (;;) {
      await chunks.handleReports();
      // Bounded history: once the children have drained, carry the counts into a fresh run.
      if (chunks.size === 0 && !chunks.hasReports && !withinBudget()) {
        await continueAsNew<typeof ExperimentWorkflow>({ ...input, carried: { ...run.carried, runs: run.carried.runs + 1 } });
      }
      // No new children once over budget: they would be orphaned by the continue-as-new.
      await chunks.startMore(withinBudget);

      if (chunks.size === 0 && chunks.exhausted && !chunks.hasReports) {
        if (chunks.waiting > 0) {
          await chunks.failStranded();
          continue;
        }
        if (run.carried.sealed) break;
        // Open experiment, nothing to do: wait for new image sets, the seal, or a periodic recheck.
        run.enter('waiting-for-images');
        await condition(() => newSetsHint, DEFAULTS.OPEN_EXPERIMENT_RECHECK);
        newSetsHint = false;
        chunks.reopen();
        run.phase = 'analyzing';
        continue;
      }
      if (chunks.size === 0 && !withinBudget()) continue;
      if (chunks.hasReports) continue;
      chunks.changed = false;
      await condition(() => chunks.changed || (chunks.exhausted && newSetsHint && chunks.hasRoom));
      if (newSetsHint) {
        newSetsHint = false;
        chunks.reopen();
      }
    }
    return await reduceAndFinish(run, plan);
  } catch (err) {
    if (isCancellation(err)) {
      run.phase = 'cancelled';
      await CancellationScope.nonCancellable(async () => {
        // Chunks cancel their activities, which kill their engines: only then is the experiment cancelled.
        await condition(() => chunks.size === 0);
        await control.syncExperimentStatus({ experimentId: plan.experimentId, status: 'cancelled', error: 'cancelled by request' });
      });
      run.markStatus('cancelled');
      run.show();
    }
    throw err;
  }
}

/** Reduce every set's tables, then decide and record the final status over ALL the experiment's sets. */
async function reduceAndFinish(run: ExperimentRun, plan: ExperimentPlan): Promise<ExperimentProgress> {
  const { experimentId } = plan;
  run.enter('reducing');
  run.markStatus('reducing');
  await control.syncExperimentStatus({ experimentId, status: 'reducing' });
  const workflowId = workflowInfo().workflowId;
  // Experiments with a platemap: profiles first, so the report can draw them.
  const profiles = plan.profiles ? await profilesStep(experimentId, workflowId) : undefined;
  const reduced = await reduce.reduceExperiment({ experimentId, workflowId, profiles });
  // A retry run only re-ran the failed sets: the counts come from reduce, over all of them.
  const setsStatus = finalStatus(reduced, plan.maxFailedFraction);
  // Profiles asked for but not made: the experiment failed (its summary and report still stand).
  const status = profiles?.ok === false ? 'failed' : setsStatus;
  await control.syncExperimentStatus({
    experimentId,
    status,
    error: setsStatus === 'failed' ? `${reduced.failed} of ${reduced.total} image sets failed` : profilesError(profiles),
    summaryUri: reduced.summaryUri,
    reportUri: reduced.reportUri,
  });
  run.phase = 'finished';
  run.markStatus(status);
  run.show();
  return run.progress();
}
