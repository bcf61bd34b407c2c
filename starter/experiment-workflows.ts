import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { ExperimentRow } from '../core/db';
import { adaptiveBatching, SEARCH_ATTRIBUTE_KEYS, TASK_QUEUES, workflowIdFor } from '../core/model';
import type { ExperimentWorkflow, ExperimentWorkflowInput } from '../workflows/experiment';

/** The starter's use of Temporal: starting an experiment's workflow and reading its state. */

/**
 * Start (or join) the experiment's workflow. The id derives from the experiment id, and a running
 * execution with that id is reused, so repeating a start never runs the experiment twice at once.
 * The workflow reads everything else (dispatch settings included) from its plan activity.
 */
export async function startExperimentWorkflow(client: Client, e: ExperimentRow): Promise<{ workflowId: string; runId: string }> {
  const workflowId = workflowIdFor(e.id);
  const input: ExperimentWorkflowInput = { experimentId: e.id };
  const batch = e.dispatch_options.batchSize;
  const batching = adaptiveBatching(e.dispatch_options) ? ' (image sets per invocation chosen from the measured time per set)' : batch > 1 ? ` (${batch} sets per invocation)` : '';
  // By name: the client process never loads workflow code.
  const handle = await client.workflow.start<typeof ExperimentWorkflow>('ExperimentWorkflow', {
    workflowId,
    taskQueue: TASK_QUEUES.workflow,
    args: [input],
    workflowIdConflictPolicy: 'USE_EXISTING',
    workflowIdReusePolicy: 'ALLOW_DUPLICATE',
    staticSummary: `${e.project_name} / ${e.name} (experiment ${e.id})`,
    staticDetails: [
      `**Experiment** ${e.id} — ${e.project_name} / ${e.name}`,
      `**Engine** ${e.engine}${batching}`,
      `**Pipeline** ${e.pipeline_uri ?? '(none: builtin defaults)'}`,
      ...(e.stages
        ? [`**Stages** ${e.stages.map((s) => `${s.name || 'experiment'}${s.groupBy.length > 0 ? ` (one run per ${s.groupBy.join(',')})` : ''}`).join(' → ')}`]
        : []),
      `**Inputs** ${e.input_prefix}`,
      `**Image sets** ${e.total_sets}${e.sealed ? '' : ' so far (open experiment)'}`,
    ].join('\n\n'),
    typedSearchAttributes: [
      { key: SEARCH_ATTRIBUTE_KEYS.experimentId, value: String(e.id) },
      { key: SEARCH_ATTRIBUTE_KEYS.project, value: e.project_name },
      { key: SEARCH_ATTRIBUTE_KEYS.status, value: 'running' },
      { key: SEARCH_ATTRIBUTE_KEYS.imageSetCount, value: e.total_sets },
    ],
  });
  return { workflowId, runId: handle.firstExecutionRunId };
}

/** The latest execution's status and close time, or `undefined` when no execution with that id exists. */
export async function workflowStatus(client: Client, workflowId: string): Promise<{ status: string; closeTime?: Date } | undefined> {
  try {
    const d = await client.workflow.getHandle(workflowId).describe();
    return { status: d.status.name, closeTime: d.closeTime };
  } catch (err) {
    if (err instanceof WorkflowNotFoundError) return undefined;
    throw err;
  }
}
