import { Client, Connection, WorkflowNotFoundError } from '@temporalio/client';
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import { temporalConfig, webUiLink, type TemporalConfig } from '../activities/lib/config';

export { webUiLink };
import type { ExperimentRow } from '../activities/lib/db';
import type { ExperimentWorkflow, ExperimentWorkflowInput } from '../workflows/experiment';
import { TASK_QUEUES, workflowIdFor } from '../workflows/task-queues';

/** The starter's Temporal side: connecting, starting an experiment's workflow, and its Web UI link. */

export class TemporalUnreachableError extends Error {
  constructor(address: string, cause: unknown) {
    super(`Temporal unreachable at ${address}: ${cause instanceof Error ? cause.message : String(cause)}`);
    this.name = 'TemporalUnreachableError';
  }
}

export const searchAttributeKeys = {
  experimentId: defineSearchAttributeKey('CpflowExperimentId', SearchAttributeType.KEYWORD),
  project: defineSearchAttributeKey('CpflowProject', SearchAttributeType.KEYWORD),
  status: defineSearchAttributeKey('CpflowStatus', SearchAttributeType.KEYWORD),
  imageSetCount: defineSearchAttributeKey('CpflowImageSetCount', SearchAttributeType.INT),
};

export async function connectClient(config: TemporalConfig = temporalConfig()): Promise<Client> {
  try {
    const connection = await Connection.connect({ address: config.CPFLOW_TEMPORAL_ADDRESS, connectTimeout: '5s' });
    return new Client({ connection, namespace: config.CPFLOW_TEMPORAL_NAMESPACE });
  } catch (err) {
    throw new TemporalUnreachableError(config.CPFLOW_TEMPORAL_ADDRESS, err);
  }
}

export interface StartTuning {
  window?: number;
  chunkSize?: number;
  maxAttempts?: number;
}

/**
 * Start (or join) the experiment's workflow. The id derives from the experiment id, and a running
 * execution with that id is reused, so repeating a start never runs the experiment twice at once.
 */
export async function startExperimentWorkflow(
  client: Client,
  e: ExperimentRow,
  tuning: StartTuning = {},
): Promise<{ workflowId: string; runId: string }> {
  const workflowId = workflowIdFor(e.id);
  const input: ExperimentWorkflowInput = {
    experimentId: e.id,
    window: tuning.window,
    chunkSize: tuning.chunkSize,
    maxAttempts: tuning.maxAttempts,
    batchSize: e.engine_options.batchSize,
  };
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
      `**Engine** ${e.engine}${e.engine_options.batchSize > 1 ? ` (${e.engine_options.batchSize} sets per invocation)` : ''}`,
      `**Pipeline** ${e.pipeline_uri ?? '(none: builtin defaults)'}`,
      `**Inputs** ${e.input_prefix}`,
      `**Image sets** ${e.total_sets}${e.sealed ? '' : ' so far (open experiment)'}`,
    ].join('\n\n'),
    typedSearchAttributes: [
      { key: searchAttributeKeys.experimentId, value: String(e.id) },
      { key: searchAttributeKeys.project, value: e.project_name },
      { key: searchAttributeKeys.status, value: 'running' },
      { key: searchAttributeKeys.imageSetCount, value: e.total_sets },
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
