/** One task queue per worker pool, so each pool scales on its own backlog. Shared by workflows and workers. */
export const TASK_QUEUES = { workflow: 'cpflow', analyze: 'cellprofiler', reduce: 'reduce' } as const;

export const workflowIdFor = (experimentId: number): string => `experiment-${experimentId}`;
