import {
  OpenTelemetryActivityInboundInterceptor,
  OpenTelemetryActivityOutboundInterceptor,
  makeWorkflowExporter,
} from '@temporalio/interceptors-opentelemetry';
import { NativeConnection, Runtime, Worker, type WorkerOptions } from '@temporalio/worker';
import { analysisActivities, controlActivities, reduceActivities } from '../activities';
import { prepareEngines } from '../activities/engines';
import { configuredCellProfiler } from '../core/cellprofiler';
import { ConfigError, temporalConfig, validateSettings, workerConfig } from '../core/config';
import { closeDb, db } from '../core/db';
import { DatabaseUnavailableError, describeError, isCredentialFailure, TemporalUnavailableError } from '../core/errors';
import { startHealthServer, type HealthServer } from '../core/health';
import { probeS3Credentials, s3Endpoint } from '../core/s3';
import { describeTemporal, temporalConnectionOptions } from '../core/temporal-settings';
import { activeTracing, startTracing, stopTracing } from '../core/tracing';
import { CPFLOW_VERSION } from '../core/version';
import { ANALYSIS_QUEUES, DEFAULTS, TASK_QUEUES } from '../core/model';
import { pollQueueBacklog } from './backlog';
import { workflowBundlePath } from './workflow-bundle';

/**
 * Worker pools. Each pool polls its own task queue so it scales on its own backlog in production:
 * `workflow` (workflows + manifest and sync activities), `cellprofiler` (image set analysis),
 * `reduce` (merging and the report). `all` runs the three in one process for laptops and tests.
 *
 * The analysis pool is routed by engine: it polls `analyze-builtin` always and the `cellprofiler`
 * queue only when this machine has CellProfiler (CPFLOW_CELLPROFILER), so a worker without it never
 * takes a CellProfiler image set. Each queue gets CPFLOW_ANALYZE_SLOTS; an experiment uses one engine,
 * so the two rarely compete.
 */
export type PoolName = 'workflow' | 'cellprofiler' | 'reduce';

/** The task queues the analysis pool of this process polls. */
export function analysisQueues(): string[] {
  return configuredCellProfiler() ? [ANALYSIS_QUEUES.cellprofiler, ANALYSIS_QUEUES.builtin] : [ANALYSIS_QUEUES.builtin];
}

export function workerOptions(pool: PoolName): Array<Omit<WorkerOptions, 'connection'>> {
  const cfg = workerConfig();
  const common = {
    namespace: temporalConfig().CPFLOW_TEMPORAL_NAMESPACE,
    shutdownGraceTime: `${cfg.CPFLOW_SHUTDOWN_GRACE_SECONDS}s` as const,
    // Heartbeats (and so cancellation requests) reach the server within 2 s, not 80% of the timeout.
    maxHeartbeatThrottleInterval: '2s' as const,
    ...tracingOptions(),
  };
  switch (pool) {
    case 'workflow':
      return [
        {
          ...common,
          taskQueue: TASK_QUEUES.workflow,
          workflowBundle: { codePath: workflowBundlePath() },
          activities: controlActivities,
          maxConcurrentActivityTaskExecutions: DEFAULTS.CONTROL_SLOTS,
        },
      ];
    case 'cellprofiler':
      return analysisQueues().map((taskQueue) => ({
        ...common,
        taskQueue,
        activities: analysisActivities,
        // Engines run in CPFLOW_ANALYZE_SLOTS slots shared by the process's engine queues
        // (activities/engine-slots.ts); the extra activities download the next sets' inputs and upload
        // finished outputs meanwhile.
        maxConcurrentActivityTaskExecutions: cfg.CPFLOW_ANALYZE_SLOTS * (1 + DEFAULTS.ANALYZE_PREFETCH_PER_SLOT),
      }));
    case 'reduce':
      return [
        {
          ...common,
          taskQueue: TASK_QUEUES.reduce,
          activities: reduceActivities,
          maxConcurrentActivityTaskExecutions: cfg.CPFLOW_REDUCE_SLOTS,
        },
      ];
  }
}

/** The worker's connection, with the same address, namespace, TLS/mTLS and API key as every client. */
export async function connectWorker(): Promise<NativeConnection> {
  const { settings } = temporalConfig();
  try {
    return await NativeConnection.connect(temporalConnectionOptions(settings));
  } catch (err) {
    throw new TemporalUnavailableError(settings.address, err);
  }
}

/**
 * OpenTelemetry for a worker: activity spans (children of the workflow's) and the sink through which
 * the bundle's workflow interceptors export their spans; a sink that drops them when tracing is off.
 */
function tracingOptions(): Pick<WorkerOptions, 'interceptors' | 'sinks'> {
  const tracing = activeTracing();
  if (!tracing) return { sinks: { exporter: { export: { fn: () => undefined } } } };
  return {
    interceptors: {
      activity: [(ctx) => ({ inbound: new OpenTelemetryActivityInboundInterceptor(ctx), outbound: new OpenTelemetryActivityOutboundInterceptor(ctx) })],
    },
    sinks: { exporter: makeWorkflowExporter(tracing.processor, tracing.resource) },
  };
}

/**
 * Run the given pools until SIGTERM/SIGINT. On a signal the workers stop polling and give running
 * activities `CPFLOW_SHUTDOWN_GRACE_SECONDS` to finish before cancelling them (Kubernetes'
 * terminationGracePeriodSeconds should be a little longer).
 */
export async function runPools(pools: PoolName[]): Promise<void> {
  validateSettings();
  await checkCredentials(pools);
  const { CPFLOW_METRICS_PORT: metricsPort, CPFLOW_METRICS_HOST: metricsHost, CPFLOW_HEALTH_PORT: healthPort } = workerConfig();
  const { settings } = temporalConfig();
  Runtime.install({
    shutdownSignals: ['SIGTERM', 'SIGINT'],
    // Task-queue latencies, slot usage and activity outcomes for Prometheus (and for autoscaling), and
    // cpflow's own (activities/metrics.ts, backlog.ts) on the same endpoint; on loopback unless
    // CPFLOW_METRICS_HOST says otherwise (Kubernetes: 0.0.0.0 for the scraper).
    telemetryOptions: metricsPort
      ? { metrics: { prometheus: { bindAddress: `${metricsHost.includes(':') ? `[${metricsHost}]` : metricsHost}:${metricsPort}` } } }
      : undefined,
  });
  startTracing('cpflow-worker');
  const health: HealthServer | undefined = healthPort ? await startHealthServer(healthPort, `cpflow worker (${pools.join(', ')})`) : undefined;
  const connection = await connectWorker();
  let stopBacklog: (() => void) | undefined;
  let watchState: NodeJS.Timeout | undefined;
  try {
    // The analysis pool may poll two queues (one per engine): one Worker each.
    const options = pools.flatMap((p) => workerOptions(p));
    // An analysis worker probes its engines meanwhile, so no image set waits for that.
    const [workers, engines] = await Promise.all([
      Promise.all(options.map((o) => Worker.create({ connection, ...o }))),
      pools.includes('cellprofiler') ? prepareEngines() : undefined,
    ]);
    if (engines) console.log(`cpflow worker: ${engines}`);
    if (metricsPort && pools.includes('workflow')) stopBacklog = pollQueueBacklog(connection, settings.namespace, (line) => console.warn(`cpflow worker: ${line}`));
    const running = Promise.all(workers.map((w) => w.run()));
    // Ready while every pool polls; not ready from the moment a shutdown begins.
    const updateHealth = () => {
      const states = workers.map((w) => w.getState());
      health?.setReady(states.every((state) => state === 'RUNNING'), options.map((o, i) => `${o.taskQueue} ${states[i]}`).join(', '));
    };
    updateHealth();
    watchState = setInterval(updateHealth, 1000);
    watchState.unref();
    console.log(
      `cpflow workers running: ${pools.join(', ')} (pid ${process.pid}; queues ${options.map((o) => o.taskQueue).join(', ')}; cpflow ${CPFLOW_VERSION}, Temporal ${describeTemporal(settings)})`,
    );
    await running;
  } finally {
    if (watchState) clearInterval(watchState);
    health?.setReady(false, 'stopped');
    stopBacklog?.();
    await connection.close();
    await closeDb();
    await stopTracing();
    await health?.close();
  }
}

/**
 * Credentials that can never work stop the worker at start-up with one line (exit 2) instead of
 * failing every activity: S3 for every pool, MariaDB for the pools that use it (the schema version is
 * checked too). A service that is merely down is only reported: activities wait for it.
 */
async function checkCredentials(pools: PoolName[]): Promise<void> {
  const s3Note = await probeS3Credentials();
  if (s3Note) console.warn(`cpflow worker: could not check the S3 credentials at ${s3Endpoint()}: ${s3Note}`);
  if (pools.includes('workflow') || pools.includes('reduce')) {
    try {
      await db();
    } catch (err) {
      if (!(err instanceof DatabaseUnavailableError)) throw err;
      console.warn(`cpflow worker: ${err.message}; starting anyway, activities will wait for it`);
    }
  }
}

export function main(pools: PoolName[]): void {
  runPools(pools).then(
    () => process.exit(0),
    (err: unknown) => {
      console.error(`cpflow worker: ${describeError(err, () => s3Endpoint())}`);
      process.exit(err instanceof ConfigError || isCredentialFailure(err) ? 2 : 1);
    },
  );
}
