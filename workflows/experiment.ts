import { CancellationScope, condition, continueAsNew, isCancellation, setHandler, workflowInfo } from '@temporalio/workflow';
import { DEFAULTS, finalStatus, type ExperimentPlan, type ExperimentProgress } from '../core/model';
import { control, reduce } from './activities-proxy';
import { profilesError, profilesStep } from './profiles-step';
import { ChunkChildren } from './chunk-children';
import { ExperimentRun, freshCarriedState, type CarriedState } from './experiment-run';
import { imageSetsAddedSignal, progressQuery, sealedSignal } from './progress';

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
 * window, accept new sets while the experiment is open, reduce once it is sealed and every set has
 * ended, and mirror the final state into MariaDB. Everything about the experiment (bucket, engine,
 * dispatch settings) comes from the plan activity, read once per run.
 */
export async function ExperimentWorkflow(input: ExperimentWorkflowInput): Promise<ExperimentProgress> {
  const run = new ExperimentRun(input.experimentId, input.carried ?? freshCarriedState(), input.searchAttributes !== false);
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

  const plan = await control.loadExperimentPlan(input.experimentId);
  run.plan = plan;
  if (!input.carried) run.carried.sealed = plan.sealed;
  const children = new ChunkChildren(run, plan);
  const withinBudget = (): boolean => workflowInfo().historyLength <= historyBudget;

  try {
    if (!input.carried) await control.syncExperimentStatus({ experimentId: plan.experimentId, status: 'running' });
    run.markStatus('running');
    run.enter('analyzing');

    for (;;) {
      // Bounded history: once the children have drained, carry the counts into a fresh run.
      if (children.size === 0 && !withinBudget()) {
        await continueAsNew<typeof ExperimentWorkflow>({ ...input, carried: { ...run.carried, runs: run.carried.runs + 1 } });
      }
      // No new children once over budget: they would be orphaned by the continue-as-new.
      await children.startMore(withinBudget);

      if (children.size === 0 && children.exhausted) {
        if (run.carried.sealed) break;
        // Open experiment, nothing to do: wait for new image sets, the seal, or a periodic recheck.
        run.enter('waiting-for-images');
        await condition(() => newSetsHint, DEFAULTS.OPEN_EXPERIMENT_RECHECK);
        newSetsHint = false;
        children.exhausted = false;
        run.phase = 'analyzing';
        continue;
      }
      if (children.size === 0 && !withinBudget()) continue;
      children.changed = false;
      await condition(() => children.changed || (children.exhausted && newSetsHint && children.hasRoom));
      if (newSetsHint) {
        newSetsHint = false;
        children.exhausted = false;
      }
    }
    return await reduceAndFinish(run, plan);
  } catch (err) {
    if (isCancellation(err)) {
      run.phase = 'cancelled';
      await CancellationScope.nonCancellable(async () => {
        // Chunks cancel their activities, which kill their engines: only then is the experiment cancelled.
        await condition(() => children.size === 0);
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
