import type { Command } from 'commander';
import { db, resetFailedImageSets, resubmitExperiment, setExperimentSealed } from '../../core/db';
import { UsageError } from '../../core/errors';
import { isTerminal, workflowIdFor } from '../../core/model';
import { withClient } from '../../core/temporal';
import { sealedSignal } from '../../workflows/progress';
import { print, resolveExperiment } from './common';

/** Commands that change an experiment's course: cancel, retry and seal. */
export function registerControl(program: Command): void {
  program
    .command('cancel <experiment>')
    .description('stop an experiment: running engines are killed, status becomes cancelled')
    .option('--json', 'machine-readable output', false)
    .action(async (ref: string, o: { json: boolean }) => {
      const e = await resolveExperiment(ref);
      if (isTerminal(e.status)) throw new UsageError(`experiment ${e.id} already ended (${e.status})`);
      await withClient((client) => client.workflow.getHandle(e.workflow_id ?? workflowIdFor(e.id)).cancel());
      print(o.json, { experimentId: e.id, cancellationRequested: true }, () => `cancellation requested for experiment ${e.id}; \`cpflow status ${e.id}\` shows when it has stopped`);
    });

  program
    .command('retry <experiment>')
    .description('re-run only the failed (or cancelled) image sets of an ended experiment')
    .option('--json', 'machine-readable output', false)
    .action(async (ref: string, o: { json: boolean }) => {
      const e = await resolveExperiment(ref);
      if (!isTerminal(e.status)) throw new UsageError(`experiment ${e.id} is still ${e.status}; retry after it ends`);
      const pool = await db();
      const reset = await resetFailedImageSets(pool, e.id);
      if (reset === 0 && e.status !== 'cancelled') throw new UsageError(`experiment ${e.id} has no failed image sets`);
      // Back to submitted: the watcher starts a new run, which finds only the reset sets pending.
      await resubmitExperiment(pool, e.id);
      print(o.json, { experimentId: e.id, imageSetsToRun: reset }, () => `experiment ${e.id}: ${reset} image sets will run again`);
    });

  program
    .command('seal <experiment>')
    .description('close an open experiment: no more image sets; it reduces once all have ended')
    .option('--json', 'machine-readable output', false)
    .action(async (ref: string, o: { json: boolean }) => {
      const e = await resolveExperiment(ref);
      await setExperimentSealed(await db(), e.id);
      if (e.status === 'running') {
        await withClient((client) => client.workflow.getHandle(e.workflow_id ?? workflowIdFor(e.id)).signal(sealedSignal));
      }
      print(o.json, { experimentId: e.id, sealed: true }, () => `experiment ${e.id} sealed`);
    });
}
