/** Names other systems see: task queues, workflow ids, search attributes. Node-free. */
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

/** One task queue per worker pool, so each pool scales on its own backlog. */
export const TASK_QUEUES = { workflow: 'cpflow', analyze: 'cellprofiler', reduce: 'reduce' } as const;

export const workflowIdFor = (experimentId: number): string => `experiment-${experimentId}`;

/**
 * Custom search attributes the ExperimentWorkflow sets. Workflows and clients use these typed keys;
 * the local stack registers the same names and types with the dev server.
 */
export const SEARCH_ATTRIBUTE_KEYS = {
  experimentId: defineSearchAttributeKey('CpflowExperimentId', SearchAttributeType.KEYWORD),
  project: defineSearchAttributeKey('CpflowProject', SearchAttributeType.KEYWORD),
  status: defineSearchAttributeKey('CpflowStatus', SearchAttributeType.KEYWORD),
  imageSetCount: defineSearchAttributeKey('CpflowImageSetCount', SearchAttributeType.INT),
} as const;
