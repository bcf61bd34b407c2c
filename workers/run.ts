import { NativeConnection, Runtime, Worker, type WorkerOptions } from '@temporalio/worker';
import { analysisActivities, controlActivities, reduceActivities } from '../activities';
import { temporalConfig, workerConfig } from '../core/config';
import { closeDb } from '../core/db';
import { TemporalUnavailableError } from '../core/errors';
import { DEFAULTS, TASK_QUEUES } from '../core/model';
import { workflowBundlePath } from './workflow-bundle';

/**
 * Worker pools. Each pool polls its own task queue so it scales on its own backlog in production:
 * `workflow` (workflows + manifest and sync activities), `cellprofiler` (image set analysis),
 * `reduce` (merging and the report). `all` runs the three in one process for laptops and tests.
 */
export type PoolName = 'workflow' | 'cellprofiler' | 'reduce';

export function workerOptions(pool: PoolName): Omit<WorkerOptions, 'connection'> {
  const cfg = workerConfig();
  const common = {
    namespace: temporalConfig().CPFLOW_TEMPORAL_NAMESPACE,
    shutdownGraceTime: `${cfg.CPFLOW_SHUTDOWN_GRACE_SECONDS}s` as const,
    // Heartbeats (and so cancellation requests) reach the server within 2 s, not 80% of the timeout.
    maxHeartbeatThrottleInterval: '2s' as const,
  };
  switch (pool) {
    case 'workflow':
      return {
        ...common,
        taskQueue: TASK_QUEUES.workflow,
        workflowBundle: { codePath: workflowBundlePath() },
        activities: controlActivities,
        maxConcurrentActivityTaskExecutions: DEFAULTS.CONTROL_SLOTS,
      };
    case 'cellprofiler':
      return {
        ...common,
        taskQueue: TASK_QUEUES.analyze,
        activities: analysisActivities,
        // Engines run in CPFLOW_ANALYZE_SLOTS slots (activities/engine-slots.ts); the extra activities
        // download the next sets' inputs and upload finished outputs meanwhile.
        maxConcurrentActivityTaskExecutions: cfg.CPFLOW_ANALYZE_SLOTS * (1 + DEFAULTS.ANALYZE_PREFETCH_PER_SLOT),
      };
    case 'reduce':
      return {
        ...common,
        taskQueue: TASK_QUEUES.reduce,
        activities: reduceActivities,
        maxConcurrentActivityTaskExecutions: cfg.CPFLOW_REDUCE_SLOTS,
      };
  }
}

export async function connectWorker(): Promise<NativeConnection> {
  const { CPFLOW_TEMPORAL_ADDRESS: address } = temporalConfig();
  try {
    return await NativeConnection.connect({ address });
  } catch (err) {
    throw new TemporalUnavailableError(address, err);
  }
}

/**
 * Run the given pools until SIGTERM/SIGINT. On a signal the workers stop polling and give running
 * activities `CPFLOW_SHUTDOWN_GRACE_SECONDS` to finish before cancelling them (Kubernetes'
 * terminationGracePeriodSeconds should be a little longer).
 */
export async function runPools(pools: PoolName[]): Promise<void> {
  const metricsPort = workerConfig().CPFLOW_METRICS_PORT;
  Runtime.install({
    shutdownSignals: ['SIGTERM', 'SIGINT'],
    // Task-queue latencies, slot usage and activity outcomes for Prometheus (and for autoscaling).
    telemetryOptions: metricsPort ? { metrics: { prometheus: { bindAddress: `0.0.0.0:${metricsPort}` } } } : undefined,
  });
  const connection = await connectWorker();
  try {
    const workers = await Promise.all(pools.map((p) => Worker.create({ connection, ...workerOptions(p) })));
    console.log(`cpflow workers running: ${pools.join(', ')} (pid ${process.pid})`);
    await Promise.all(workers.map((w) => w.run()));
  } finally {
    await connection.close();
    await closeDb();
  }
}

export function main(pools: PoolName[]): void {
  runPools(pools).then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(`cpflow worker: ${err instanceof Error ? err.message : String(err)}`);
      process.exit(1);
    },
  );
}
