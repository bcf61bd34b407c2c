import { ActivityCancellationType, proxyActivities, type ActivityOptions } from '@temporalio/workflow';
import {
  analysisQueueFor,
  analysisTimeoutSeconds,
  DEFAULTS,
  TASK_QUEUES,
  type AnalysisActivities,
  type ControlActivities,
  type DispatchOptions,
  type EngineName,
  type ProfilesActivities,
  type ReduceActivities,
} from '../core/model';

/**
 * Activity stubs per pool. Timeouts and retry policies live here, beside the workflows that use them.
 * Transient failures (network, S3 5xx, database down, worker lost by heartbeat timeout) retry with
 * exponential backoff; input errors are thrown non-retryable by the activities themselves.
 */

/** Manifest reads and DB mirror writes: retried without limit, so an outage only delays them. */
export const control = proxyActivities<ControlActivities>({
  taskQueue: TASK_QUEUES.workflow,
  startToCloseTimeout: '2 minutes',
  retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '30 seconds' },
});

/**
 * Failure types the analysis activity throws when retrying cannot help. An engine missing on a
 * worker (`EngineUnavailable`) is not among them: analysis is routed by engine, so it can only mean a
 * misconfigured worker, and another worker must get the set (it is retried, never failed).
 */
export const NON_RETRYABLE_ANALYSIS_ERRORS = ['ImageSetInputError', 'EngineFailure'];

/**
 * Analysis retries without an attempt limit: outages (S3, database, a lost worker) must delay a set,
 * never fail it. The activity itself ends retries for input errors at once and for engine failures
 * after the experiment's `maxEngineAttempts` (it knows which is which; a retry policy cannot).
 */
export function analysisOptions(dispatch: DispatchOptions, engine?: EngineName): ActivityOptions {
  return {
    // One queue per engine: only workers that have the engine poll it.
    taskQueue: engine ? analysisQueueFor(engine) : TASK_QUEUES.analyze,
    startToCloseTimeout: `${analysisTimeoutSeconds(dispatch)} seconds`,
    // A killed worker stops heartbeating; Temporal notices within this and retries elsewhere.
    heartbeatTimeout: DEFAULTS.ANALYSIS_HEARTBEAT_TIMEOUT,
    // A cancelled experiment is recorded as cancelled only after its engines were really stopped.
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    retry: {
      initialInterval: '2 seconds',
      backoffCoefficient: 2,
      // Short enough that analysis resumes within seconds of an outage ending.
      maximumInterval: '15 seconds',
      nonRetryableErrorTypes: NON_RETRYABLE_ANALYSIS_ERRORS,
    },
  };
}

export const analysis = (options: ActivityOptions) => proxyActivities<AnalysisActivities>(options);

export const reduce = proxyActivities<ReduceActivities>({
  taskQueue: TASK_QUEUES.reduce,
  startToCloseTimeout: DEFAULTS.REDUCE_TIMEOUT,
  heartbeatTimeout: '1 minute',
  retry: { initialInterval: '2 seconds', backoffCoefficient: 2, maximumInterval: '1 minute', maximumAttempts: 10 },
});

/**
 * The profiles step (CytoTable, pycytominer) on the reduce pool. Retried without an attempt limit so
 * outages only delay it; the activity itself ends retries for bad input and missing tools at once
 * and for crashes of the tools after DEFAULTS.PROFILES_MAX_ATTEMPTS.
 */
export const profiles = proxyActivities<ProfilesActivities>({
  taskQueue: TASK_QUEUES.reduce,
  startToCloseTimeout: DEFAULTS.PROFILES_TIMEOUT,
  heartbeatTimeout: '1 minute',
  retry: {
    initialInterval: '2 seconds',
    backoffCoefficient: 2,
    maximumInterval: '1 minute',
    nonRetryableErrorTypes: ['ProfilesInputError', 'ProfilesUnavailable', 'ProfilesFailure'],
  },
});
