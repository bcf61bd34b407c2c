/** Names other systems see: task queues, workflow ids, search attributes. Node-free. */
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import type { EngineName } from './domain';

/** One task queue per worker pool, so each pool scales on its own backlog. */
export const TASK_QUEUES = { workflow: 'cpflow', analyze: 'cellprofiler', reduce: 'reduce' } as const;

/**
 * Analysis is routed by engine: one task queue per engine, polled only by workers that have that
 * engine. A worker without CellProfiler never polls `cellprofiler`, so it can never take (and fail)
 * a CellProfiler image set; the builtin engine, which every worker has, gets a queue of its own.
 * `cellprofiler` keeps its old name (deployments scale the analysis pool on its backlog).
 */
export const ANALYSIS_QUEUES = { cellprofiler: TASK_QUEUES.analyze, builtin: 'analyze-builtin' } as const satisfies Record<EngineName, string>;

export const analysisQueueFor = (engine: EngineName): string => ANALYSIS_QUEUES[engine];

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
