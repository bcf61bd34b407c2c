import { ActivityCancellationType, proxyActivities, type ActivityOptions } from '@temporalio/workflow';
import type * as activities from '../activities';
import { TASK_QUEUES } from './task-queues';

/**
 * Activity stubs per pool. Timeouts and retry policies live here, beside the workflows that use them.
 * Transient failures (network, S3 5xx, database down, worker lost by heartbeat timeout) retry with
 * exponential backoff; input errors are thrown non-retryable by the activities themselves.
 */


/** Manifest reads and DB mirror writes: retried without limit, so an outage only delays them. */
export const control = proxyActivities<typeof activities>({
  taskQueue: TASK_QUEUES.workflow,
  startToCloseTimeout: '2 minutes',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '30 seconds' },
});

/**
 * Analysis retries without an attempt limit: outages (S3, database, a lost worker) must delay a set,
 * never fail it. The activity itself ends retries for input errors at once and for engine failures
 * after `maxEngineAttempts` (it knows which is which; a retry policy cannot).
 */
export function analyzeOptions(timeoutMinutes: number): ActivityOptions {
  return {
    taskQueue: TASK_QUEUES.analyze,
    startToCloseTimeout: `${timeoutMinutes} minutes`,
    // A killed worker stops heartbeating; Temporal notices within this and retries elsewhere.
    heartbeatTimeout: '20 seconds',
    // A cancelled experiment is recorded as cancelled only after its engines were really stopped.
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    retry: {
      initialInterval: '2 seconds',
      backoffCoefficient: 2,
      // Short enough that analysis resumes within seconds of an outage ending.
      maximumInterval: '15 seconds',
      nonRetryableErrorTypes: ['ImageSetInputError', 'EngineFailure', 'EngineUnavailable'],
    },
  };
}

export const analyze = (options: ActivityOptions) => proxyActivities<typeof activities>(options);

export const reduce = proxyActivities<typeof activities>({
  taskQueue: TASK_QUEUES.reduce,
  startToCloseTimeout: '2 hours',
  heartbeatTimeout: '1 minute',
  retry: { initialInterval: '2 seconds', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 10 },
});
