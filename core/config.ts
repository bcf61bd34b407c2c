import fs from 'node:fs';
import os from 'node:os';
import { z } from 'zod';
import { ConfigError } from './errors';
import * as DEFAULTS from './model/defaults';
import { temporalSettings, type TemporalSettings } from './temporal-settings';

/**
 * Every setting cpflow reads from the environment, validated in one place so a bad value is reported
 * once, by name, at start-up instead of surfacing later as a confusing connection error.
 */
const positiveInt = (fallback: number) => z.coerce.number().int().positive().default(fallback);
const port = z.coerce.number().int().min(1).max(65535);
const bool = (fallback: boolean) =>
  z
    .enum(['true', 'false', '1', '0'])
    .default(fallback ? 'true' : 'false')
    .transform((v) => v === 'true' || v === '1');

/** Temporal's address, namespace and security come from @temporalio/envconfig (temporal-settings.ts). */
const temporalSchema = z.object({
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
  /** TLS to MariaDB; also on whenever a CA or client certificate is given. */
  CPFLOW_DB_TLS: bool(false),
  /** PEM file of the CA that signed the server's certificate (default: the system's CAs). */
  CPFLOW_DB_TLS_CA: z.string().min(1).optional(),
  /** PEM client certificate and key, for accounts that REQUIRE X509. */
  CPFLOW_DB_TLS_CERT: z.string().min(1).optional(),
  CPFLOW_DB_TLS_KEY: z.string().min(1).optional(),
  /** Check the server's certificate and that it names CPFLOW_DB_HOST. Turn off only for a throwaway server. */
  CPFLOW_DB_TLS_VERIFY_SERVER: bool(true),
});

const s3Schema = z.object({
  CPFLOW_S3_ENDPOINT: z.string().url().optional(),
  /** Unset: the AWS SDK's chain (AWS_REGION, the profile's region), else us-east-1 for a custom endpoint. */
  CPFLOW_S3_REGION: z.string().min(1).optional(),
  /** Unset: the AWS SDK's credential chain (environment, profile, web identity, instance/pod role). */
  CPFLOW_S3_ACCESS_KEY: z.string().min(1).optional(),
  CPFLOW_S3_SECRET_KEY: z.string().min(1).optional(),
  /** PEM file of the CA that signed an HTTPS endpoint's certificate (a private MinIO). */
  CPFLOW_S3_TLS_CA: z.string().min(1).optional(),
  /** MinIO and most on-premise S3 need path-style addressing. */
  CPFLOW_S3_FORCE_PATH_STYLE: bool(true),
});

const workerSchema = z.object({
  /** Image sets analysed at once by one cellprofiler-pool worker process. */
  CPFLOW_ANALYZE_SLOTS: positiveInt(Math.max(1, Math.round(os.cpus().length * DEFAULTS.ANALYZE_SLOTS_PER_CPU))),
  CPFLOW_REDUCE_SLOTS: positiveInt(DEFAULTS.REDUCE_SLOTS),
  /** How long a SIGTERM'd worker lets running activities finish before it cancels them. */
  CPFLOW_SHUTDOWN_GRACE_SECONDS: positiveInt(DEFAULTS.SHUTDOWN_GRACE_SECONDS),
  /** The `cellprofiler` executable on this worker; unset (or empty) means no CellProfiler here. */
  CPFLOW_CELLPROFILER: z.preprocess((v) => (v === '' ? undefined : v), z.string().min(1).optional()),
  /**
   * CellProfiler plugins directory on this worker (passed as --plugins-directory); every file in it
   * is hashed into the provenance of what it analyses.
   */
  CPFLOW_CELLPROFILER_PLUGINS: z.preprocess(
    (v) => (v === '' ? undefined : v),
    z
      .string()
      .refine((dir) => fs.existsSync(dir) && fs.statSync(dir).isDirectory(), 'no such directory')
      .optional(),
  ),
  /** Run CellProfiler in warm processes, one per engine slot (0: start the CLI for every engine invocation). */
  CPFLOW_CELLPROFILER_WARM: bool(DEFAULTS.CELLPROFILER_WARM),
  /** A warm CellProfiler above this resident memory after a run is replaced. */
  CPFLOW_CELLPROFILER_WARM_MAX_RSS_MIB: positiveInt(DEFAULTS.CELLPROFILER_WARM_MAX_RSS_MIB),
  /** Python of the profiling venv (CytoTable + pycytominer) on a reduce-pool worker; unset means no profiles here. */
  CPFLOW_PROFILES_PYTHON: z.string().min(1).optional(),
  CPFLOW_WORK_DIR: z.string().min(1).default(os.tmpdir()),
  /** Benchmarks only: `noop` replaces every engine on this worker with one that writes tables without analysis. */
  CPFLOW_ENGINE_OVERRIDE: z.preprocess((v) => (v === '' ? undefined : v), z.enum(['noop']).optional()),
  /** Benchmarks only: the no-op engine appends each image set key it analysed to this file (duplicate counting). */
  CPFLOW_NOOP_RUN_LOG: z.string().min(1).optional(),
  /** When set, workers serve Temporal SDK metrics and cpflow's own for Prometheus on this port, at CPFLOW_METRICS_HOST. */
  CPFLOW_METRICS_PORT: port.optional(),
  /** Address the metrics endpoint binds: loopback unless told (Kubernetes sets 0.0.0.0 for the scraper). */
  CPFLOW_METRICS_HOST: z.string().min(1).default(DEFAULTS.METRICS_HOST),
  /** When set, workers and the starter serve /healthz and /readyz on this port (0.0.0.0), for probes. */
  CPFLOW_HEALTH_PORT: port.optional(),
});

/** Per-image limits, checked at submit (local files) and by the analysis worker before decoding. */
const imageLimitsSchema = z.object({
  CPFLOW_MAX_IMAGE_PIXELS: positiveInt(DEFAULTS.MAX_IMAGE_PIXELS),
  CPFLOW_MAX_IMAGE_BYTES: positiveInt(DEFAULTS.MAX_IMAGE_BYTES),
});

/**
 * The account `cpflow migrate` uses (DDL on cpflow's database). Unset: the runtime account, for
 * single-account installations. Runtime processes never read these.
 */
const migrationSchema = z.object({
  CPFLOW_DB_MIGRATE_USER: z.string().min(1).optional(),
  CPFLOW_DB_MIGRATE_PASSWORD: z.string().optional(),
});

/** Every environment variable these schemas read (deploy/k8s is checked against it, with temporal-settings' and tracing's). */
export const SETTING_NAMES: readonly string[] = [temporalSchema, dbSchema, s3Schema, workerSchema, imageLimitsSchema, migrationSchema].flatMap(
  (schema) => Object.keys(schema.shape),
);

export type TemporalConfig = z.infer<typeof temporalSchema> & {
  /** Resolved from TEMPORAL_ADDRESS / CPFLOW_TEMPORAL_ADDRESS / the TOML profile. */
  CPFLOW_TEMPORAL_ADDRESS: string;
  CPFLOW_TEMPORAL_NAMESPACE: string;
  settings: TemporalSettings;
};
export type DbConfig = z.infer<typeof dbSchema>;
export type S3Config = z.infer<typeof s3Schema>;
export type WorkerConfig = z.infer<typeof workerSchema>;
export type ImageLimitsConfig = z.infer<typeof imageLimitsSchema>;
export type MigrationConfig = z.infer<typeof migrationSchema>;

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

export function temporalConfig(env = process.env): TemporalConfig {
  const settings = temporalSettings(env);
  return { ...parse(temporalSchema, env), CPFLOW_TEMPORAL_ADDRESS: settings.address, CPFLOW_TEMPORAL_NAMESPACE: settings.namespace, settings };
}
export const dbConfig = (env = process.env): DbConfig => parse(dbSchema, env);
export const s3Config = (env = process.env): S3Config => parse(s3Schema, env);
export const workerConfig = (env = process.env): WorkerConfig => parse(workerSchema, env);
export const imageLimitsConfig = (env = process.env): ImageLimitsConfig => parse(imageLimitsSchema, env);
export const migrationConfig = (env = process.env): MigrationConfig => parse(migrationSchema, env);

/**
 * Every setting at once, as every command and worker does at start-up: one ConfigError naming each
 * bad variable (a worker that never touches MariaDB still refuses CPFLOW_DB_PORT=abc).
 */
export function validateSettings(env = process.env): void {
  const problems: string[] = [];
  for (const read of [temporalConfig, dbConfig, s3Config, workerConfig, imageLimitsConfig, migrationConfig]) {
    try {
      read(env);
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems.push(err.message.replace(/^invalid configuration: /, ''));
    }
  }
  if (problems.length > 0) throw new ConfigError(`invalid configuration: ${problems.join('; ')}`);
}

/** The Temporal Web UI page of a workflow, when the UI's address is configured. */
export function webUiLink(workflowId: string, config: TemporalConfig = temporalConfig()): string | undefined {
  if (!config.CPFLOW_TEMPORAL_UI_URL) return undefined;
  const ui = config.CPFLOW_TEMPORAL_UI_URL.replace(/\/$/, '');
  return `${ui}/namespaces/${encodeURIComponent(config.CPFLOW_TEMPORAL_NAMESPACE)}/workflows/${encodeURIComponent(workflowId)}`;
}
