import os from 'node:os';
import { z } from 'zod';
import { ConfigError } from './errors';
import * as DEFAULTS from './model/defaults';

/**
 * Every setting cpflow reads from the environment, validated in one place so a bad value is reported
 * once, by name, at start-up instead of surfacing later as a confusing connection error.
 */
const positiveInt = (fallback: number) => z.coerce.number().int().positive().default(fallback);
const port = z.coerce.number().int().min(1).max(65535);

const temporalSchema = z.object({
  CPFLOW_TEMPORAL_ADDRESS: z.string().regex(/^[^\s:]+:\d+$/, 'expected host:port').default(DEFAULTS.TEMPORAL_ADDRESS),
  CPFLOW_TEMPORAL_NAMESPACE: z.string().min(1).default(DEFAULTS.TEMPORAL_NAMESPACE),
  CPFLOW_TEMPORAL_UI_URL: z.string().url().optional(),
});

const dbSchema = z.object({
  CPFLOW_DB_HOST: z.string().min(1).default(DEFAULTS.DB_HOST),
  CPFLOW_DB_PORT: port.default(DEFAULTS.DB_PORT),
  CPFLOW_DB_USER: z.string().min(1).default(DEFAULTS.DB_USER),
  CPFLOW_DB_PASSWORD: z.string().default(''),
  CPFLOW_DB_NAME: z
    .string()
    .regex(/^[A-Za-z0-9_]+$/, 'letters, digits and _ only')
    .default(DEFAULTS.DB_NAME),
  CPFLOW_DB_POOL_SIZE: positiveInt(DEFAULTS.DB_POOL_SIZE),
});

const s3Schema = z.object({
  CPFLOW_S3_ENDPOINT: z.string().url().optional(),
  CPFLOW_S3_REGION: z.string().min(1).default(DEFAULTS.S3_REGION),
  CPFLOW_S3_ACCESS_KEY: z.string().min(1).optional(),
  CPFLOW_S3_SECRET_KEY: z.string().min(1).optional(),
  /** MinIO and most on-premise S3 need path-style addressing. */
  CPFLOW_S3_FORCE_PATH_STYLE: z
    .enum(['true', 'false'])
    .default('true')
    .transform((v) => v === 'true'),
});

const workerSchema = z.object({
  /** Image sets analysed at once by one cellprofiler-pool worker process. */
  CPFLOW_ANALYZE_SLOTS: positiveInt(Math.max(1, Math.round(os.cpus().length * DEFAULTS.ANALYZE_SLOTS_PER_CPU))),
  CPFLOW_REDUCE_SLOTS: positiveInt(DEFAULTS.REDUCE_SLOTS),
  /** How long a SIGTERM'd worker lets running activities finish before it cancels them. */
  CPFLOW_SHUTDOWN_GRACE_SECONDS: positiveInt(DEFAULTS.SHUTDOWN_GRACE_SECONDS),
  /** The `cellprofiler` executable on this worker; unset means no CellProfiler here. */
  CPFLOW_CELLPROFILER: z.string().min(1).optional(),
  CPFLOW_WORK_DIR: z.string().min(1).default(os.tmpdir()),
  /** Benchmarks only: `noop` replaces every engine on this worker with one that writes tables without analysis. */
  CPFLOW_ENGINE_OVERRIDE: z.preprocess((v) => (v === '' ? undefined : v), z.enum(['noop']).optional()),
  /** Benchmarks only: the no-op engine appends each image set key it analysed to this file (duplicate counting). */
  CPFLOW_NOOP_RUN_LOG: z.string().min(1).optional(),
  /** When set, workers serve Temporal SDK metrics for Prometheus on this port (0.0.0.0). */
  CPFLOW_METRICS_PORT: port.optional(),
});

export type TemporalConfig = z.infer<typeof temporalSchema>;
export type DbConfig = z.infer<typeof dbSchema>;
export type S3Config = z.infer<typeof s3Schema>;
export type WorkerConfig = z.infer<typeof workerSchema>;

export { ConfigError };

function parse<T extends z.ZodTypeAny>(schema: T, env: NodeJS.ProcessEnv): z.infer<T> {
  const result = schema.safeParse(env);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    const key = String(issue.path[0] ?? '?');
    const value = env[key];
    return `${key}=${value === undefined ? '(unset)' : JSON.stringify(value)}: ${issue.message}`;
  });
  throw new ConfigError(`invalid configuration: ${problems.join('; ')}`);
}

export const temporalConfig = (env = process.env): TemporalConfig => parse(temporalSchema, env);
export const dbConfig = (env = process.env): DbConfig => parse(dbSchema, env);
export const s3Config = (env = process.env): S3Config => parse(s3Schema, env);
export const workerConfig = (env = process.env): WorkerConfig => parse(workerSchema, env);

/** The Temporal Web UI page of a workflow, when the UI's address is configured. */
export function webUiLink(workflowId: string, config: TemporalConfig = temporalConfig()): string | undefined {
  if (!config.CPFLOW_TEMPORAL_UI_URL) return undefined;
  const ui = config.CPFLOW_TEMPORAL_UI_URL.replace(/\/$/, '');
  return `${ui}/namespaces/${encodeURIComponent(config.CPFLOW_TEMPORAL_NAMESPACE)}/workflows/${encodeURIComponent(workflowId)}`;
}
