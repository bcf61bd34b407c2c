/**
 * Every default cpflow uses, written once, with its unit and meaning, in the plain style of
 * Distributed-CellProfiler's config.py. Node-free: workflows, activities, the CLI, workers and the
 * deploy files all import it. Environment variables and `cpflow submit` flags that override a value
 * are named beside it; config.ts and the CLI take their defaults from here and nowhere else.
 */

// ---------------------------------------------------------------------------------------------
// Dispatch: how one experiment's image sets are handed to the analysis pool (per experiment,
// chosen at `cpflow submit`, stored with the experiment).

/** Image sets per engine invocation (analysis activity). Unit: image sets. `--batch-size`. */
export const BATCH_SIZE = 1;
/** Largest batch a submit may ask for. Unit: image sets. */
export const MAX_BATCH_SIZE = 64;
/** Image sets in flight at once across one experiment. Unit: image sets. `--window`. */
export const WINDOW = 16;
/** Image sets per chunk child workflow: keeps each child far below Temporal's 10,240-event limit. Unit: image sets. */
export const CHUNK_SIZE = 400;
/** Chunk children running at once, so one chunk's tail overlaps the next one's start. Unit: child workflows. */
export const CONCURRENT_CHUNKS = 2;
/**
 * Attempts an engine failure (a crash, a timeout; not an input error, not an outage) gets before
 * its image sets are failed. Outages retry without limit. Unit: attempts. `--max-attempts`.
 */
export const MAX_ENGINE_ATTEMPTS = 3;
/**
 * Longest one engine invocation (one batch of image sets) may run before it is killed and counted
 * as an engine failure. Unit: seconds. `--engine-timeout`.
 */
export const ENGINE_TIMEOUT_SECONDS = 3600;
/**
 * Head-room of the analysis activity over the engine's own time-out, for downloading inputs and
 * uploading outputs. The activity's start-to-close time-out is the engine time-out plus this. Unit: seconds.
 */
export const TRANSFER_ALLOWANCE_SECONDS = 600;
/** Above this fraction of failed image sets the experiment ends `failed`, else `done_with_failures`. Unit: 0–1. `--max-failed-fraction`. */
export const MAX_FAILED_FRACTION = 0.5;

// ---------------------------------------------------------------------------------------------
// Workflow internals (not user settings; tests lower some of them).

/** Continue an ExperimentWorkflow as new past this many history events (well before 10,240). Unit: events. */
export const HISTORY_EVENTS_BUDGET = 4_000;
/** While an open experiment is idle, re-read MariaDB this often in case a lab system sealed it. Unit: Temporal duration. */
export const OPEN_EXPERIMENT_RECHECK = '1 minute';
/** Image set outcomes mirrored to MariaDB per sync activity. Unit: outcomes. */
export const SYNC_BATCH = 100;
/** Longest an outcome waits before it is mirrored to MariaDB. Unit: milliseconds. */
export const SYNC_EVERY_MS = 2_000;
/** Failures listed in progress and the Web UI (the rest are counted). Unit: failures. */
export const RECENT_FAILURES_SHOWN = 20;
/** A worker that stops heartbeating for this long is presumed lost; its activity retries elsewhere. Unit: Temporal duration. */
export const ANALYSIS_HEARTBEAT_TIMEOUT = '20 seconds';
/** How often the analysis activity heartbeats while it works. Unit: milliseconds. */
export const ANALYSIS_HEARTBEAT_EVERY_MS = 2_000;
/** Longest the reduce activity may run. Unit: Temporal duration. */
export const REDUCE_TIMEOUT = '2 hours';

// ---------------------------------------------------------------------------------------------
// Workers (environment variables read at start-up; see config.ts).

/** Image sets analysed at once per cellprofiler-pool worker process, per CPU. Unit: slots per CPU. `CPFLOW_ANALYZE_SLOTS` overrides the product. */
export const ANALYZE_SLOTS_PER_CPU = 1;
/** Reduce activities at once per reduce-pool worker. Unit: activities. `CPFLOW_REDUCE_SLOTS`. */
export const REDUCE_SLOTS = 2;
/** Manifest and sync activities at once per workflow-pool worker. Unit: activities. */
export const CONTROL_SLOTS = 20;
/** On SIGTERM, running activities get this long to finish before they are cancelled. Unit: seconds. `CPFLOW_SHUTDOWN_GRACE_SECONDS`. */
export const SHUTDOWN_GRACE_SECONDS = 60;
/** MariaDB connections per process. Unit: connections. `CPFLOW_DB_POOL_SIZE`. */
export const DB_POOL_SIZE = 8;

// ---------------------------------------------------------------------------------------------
// Connections (environment variables; see config.ts).

/** Temporal frontend. Unit: host:port. `CPFLOW_TEMPORAL_ADDRESS`. */
export const TEMPORAL_ADDRESS = '127.0.0.1:7233';
/** Temporal namespace. `CPFLOW_TEMPORAL_NAMESPACE`. */
export const TEMPORAL_NAMESPACE = 'default';
/** MariaDB host. `CPFLOW_DB_HOST`. */
export const DB_HOST = '127.0.0.1';
/** MariaDB port. `CPFLOW_DB_PORT`. */
export const DB_PORT = 3306;
/** MariaDB account. `CPFLOW_DB_USER`. */
export const DB_USER = 'cpflow';
/** MariaDB database. `CPFLOW_DB_NAME`. */
export const DB_NAME = 'cpflow';
/** S3 region. `CPFLOW_S3_REGION`. */
export const S3_REGION = 'us-east-1';

// ---------------------------------------------------------------------------------------------
// Submit and reduce.

/** Files uploaded at once by `cpflow submit --folder`. Unit: files. */
export const UPLOAD_CONCURRENCY = 8;
/**
 * Image sets whose tables reduce reads at once (rows are still written in order). Each read is a few
 * small GETs, so the reduce is latency-bound well below this. Unit: image sets.
 */
export const REDUCE_READ_CONCURRENCY = 32;
/** Image sets `cpflow analyze-local` runs at once. Unit: image sets. `-j`. */
export const LOCAL_JOBS = 2;

// ---------------------------------------------------------------------------------------------
// Analysis off the event loop and overlapped transfers (issue 10).

/**
 * Analysis activities a cellprofiler-pool worker takes beyond its engine slots, per slot: while the
 * slots compute, these download their inputs (and finished ones upload their outputs), then wait,
 * heartbeating, for a free slot. The worker's activity slots are CPFLOW_ANALYZE_SLOTS × (1 + this).
 * 3 hides Temporal's per-activity round trips behind short sets (overhead ratio 1.93 → 1.50 at 1,
 * builtin engine, 512 px); a set waits for at most 3 others, so with the default engine time-out only
 * sets longer than ~20 minutes could outwait their activity time-out. Unit: activities per engine slot.
 */
export const ANALYZE_PREFETCH_PER_SLOT = 3;
/** S3 transfers (inputs of a batch, outputs of a batch) one analysis activity runs at once. Unit: transfers. */
export const TRANSFER_CONCURRENCY = 8;
/**
 * Image sets measured from their recorded summaries whose object tables the reduce still reads, for
 * the report's histograms (a uniform random choice of sets; exact counts, means, minima and maxima
 * come from every set's summary). Unit: image sets.
 */
export const REPORT_SAMPLE_SETS = 250;
