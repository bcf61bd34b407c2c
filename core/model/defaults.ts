/**
 * Every default cpflow uses, written once, with its unit and meaning, in the plain style of
 * Distributed-CellProfiler's config.py. Node-free: workflows, activities, the CLI, workers and the
 * deploy files all import it. Environment variables and `cpflow submit` flags that override a value
 * are named beside it; config.ts and the CLI take their defaults from here and nowhere else.
 */

// ---------------------------------------------------------------------------------------------
// Dispatch: how one experiment's image sets are handed to the analysis pool (per experiment,
// chosen at `cpflow submit`, stored with the experiment).

/**
 * Image sets per engine invocation (analysis activity) when `--batch-size` is given without a value
 * that changes it. Without `--batch-size` the size adapts to the measured cost per set (below). Unit:
 * image sets. `--batch-size`.
 */
export const BATCH_SIZE = 1;
/** Largest batch a submit may ask for, and the largest adaptive batching chooses. Unit: image sets. */
export const MAX_BATCH_SIZE = 64;
/**
 * Adaptive batching: what one analysis activity costs beyond its work (Temporal schedules it, a
 * worker polls and starts it, it completes, and a workflow task reacts), measured on the 2-core
 * development machine under load (README: 161 ms scheduled → started, ~200 ms per workflow task).
 * Unit: seconds.
 */
export const ACTIVITY_OVERHEAD_SECONDS = 0.2;
/**
 * Adaptive batching keeps ACTIVITY_OVERHEAD_SECONDS under this fraction of an activity's engine
 * time: batch size = ⌈overhead / (fraction × engine seconds per set)⌉, so a 5 ms no-op set runs in
 * the largest batches and a 60 s CellProfiler set alone. Unit: 0–1.
 */
export const ACTIVITY_OVERHEAD_FRACTION = 0.05;
/**
 * Adaptive batching keeps a batch's expected engine time under this fraction of the engine time-out,
 * so a batch of sets never times out where its sets alone would not. Unit: 0–1.
 */
export const ADAPTIVE_MAX_TIMEOUT_FRACTION = 0.25;
/**
 * What one experiment may have in flight at once: image sets with `--batch-size` (batches of that
 * size, ⌈window / size⌉ of them), groups for a grouped stage, and analysis activities with adaptive
 * batching (each one batch of the measured size, so a 5 ms set and a 60 s set both keep `window`
 * invocations' worth of work queued). Shared among the chunks running at once. Unit: image sets,
 * groups or activities as said. `--window`.
 */
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
/**
 * S3 region used only when CPFLOW_S3_REGION is unset, the AWS SDK's chain (AWS_REGION, profile) finds
 * none, and a custom endpoint (MinIO) is configured, which ignores regions. `CPFLOW_S3_REGION`.
 */
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
// Production operations: health, metrics, connections (see deploy/k8s/README.md).

/** How often a workflow-pool process reads the task queues' backlog for `cpflow_task_queue_backlog`. Unit: milliseconds. */
export const BACKLOG_POLL_MS = 15_000;
/** How long a client waits for Temporal to answer a first connection. Unit: Temporal duration. */
export const TEMPORAL_CONNECT_TIMEOUT = '5s';

// ---------------------------------------------------------------------------------------------
// Input integrity, names and least privilege (issue 9).

/**
 * Largest image, in pixels per plane (width × height), that `cpflow submit` accepts and an analysis
 * worker decodes; larger ones fail their image set at once, read from the file's header before any
 * decoding. Unit: pixels (2^27: 11585², e.g. a 10240² stitched well fits; a 16-bit plane this size is
 * 256 MiB raw). `CPFLOW_MAX_IMAGE_PIXELS`. The builtin engine decodes and segments in a worker
 * thread (activities/engines/builtin/thread-pool.ts), so heartbeats flow whatever the size; the limit
 * is about memory: a 2 GB-decoded image is refused before it is read.
 */
export const MAX_IMAGE_PIXELS = 2 ** 27;
/** Largest image file accepted at submit and downloaded for analysis. Unit: bytes. `CPFLOW_MAX_IMAGE_BYTES`. */
export const MAX_IMAGE_BYTES = 512 * 1024 * 1024;
/** Largest `--pipeline` file read (a .cppipe is a few tens of kilobytes). Unit: bytes. */
export const MAX_PIPELINE_BYTES = 10 * 1024 * 1024;
/** Buckets cpflow derives from project names start with this; the local stack's S3 user may touch only these. */
export const BUCKET_PREFIX = 'cpflow-';
/** Worker metrics listen on this address unless told otherwise. `CPFLOW_METRICS_HOST` (0.0.0.0 in Kubernetes). */
export const METRICS_HOST = '127.0.0.1';
/** The local stack's MariaDB account that runs migrations (DDL); the runtime account has DML only. */
export const DB_MIGRATE_USER = 'cpflow_migrate';

// ---------------------------------------------------------------------------------------------
// Profiles (experiments submitted with `--platemap`; activities/profiles/).

/** Platemap column and value that mark negative-control wells when `--controls` is not given (pycytominer's convention). */
export const PROFILES_CONTROL_COLUMN = 'control_type';
export const PROFILES_CONTROL_VALUE = 'negcon';
/** pycytominer.normalize method (pycytominer's own default). `--normalization`. */
export const PROFILES_NORMALIZATION = 'standardize';
/** pycytominer.feature_select operations, the profiling recipe's list. */
export const PROFILES_FEATURE_SELECTION = ['variance_threshold', 'correlation_threshold', 'drop_na_columns', 'blocklist'] as const;
/** How single cells become one well profile (pycytominer.aggregate operation). */
export const PROFILES_AGGREGATION = 'median';
/** The report's per-well heatmap shows the first of these features present (after normalisation). `--report-feature`. */
export const PROFILES_REPORT_FEATURES = ['Nuclei_AreaShape_Area', 'Cells_AreaShape_Area'] as const;
/**
 * Single cells handed to pycytominer.aggregate at once: wells are aggregated in batches of whole
 * wells holding at most this many cells (a bigger well is a batch of its own), so memory does not
 * grow with the experiment. Unit: cells.
 */
export const PROFILES_CELLS_PER_BATCH = 250_000;
/** Rows per CytoTable chunk (its `chunk_size`); larger chunks mean fewer DuckDB passes over the tables. Unit: rows. */
export const PROFILES_CYTOTABLE_CHUNK_SIZE = 200_000;
/** DuckDB memory limit inside the profiles step (CytoTable's joins and the per-well batching). Unit: DuckDB size string. */
export const PROFILES_DUCKDB_MEMORY_LIMIT = '512MB';
/** Image sets whose tables the profiles step downloads at once. Unit: image sets. */
export const PROFILES_DOWNLOAD_CONCURRENCY = 8;
/** Longest the profiles activity may run. Unit: Temporal duration. */
export const PROFILES_TIMEOUT = '4 hours';
/** Attempts a crash of the profiling tools gets (outages retry without limit). Unit: attempts. */
export const PROFILES_MAX_ATTEMPTS = 3;

// ---------------------------------------------------------------------------------------------
// Groups, stages, LoadData and plugins (issue 13: production-shaped CellProfiler runs).

/**
 * Most image sets one group may hold (`--group-by`): a group runs in ONE engine invocation on one
 * worker, and its manifest lists every set. A 384-well plate at 9 sites is 3,456 sets. Unit: image sets.
 */
export const MAX_GROUP_SETS = 5_000;
/**
 * Image sets `cpflow submit` hands CellProfiler (through its own pipeline preparation, nothing is
 * analysed) to check that the pipeline's input rules make exactly the expected image sets from
 * the files: the first group, or this many sets of an ungrouped stage. Unit: image sets.
 */
export const SUBMIT_CHECK_SETS = 8;
/** Longest the submit-time CellProfiler check may take per stage. Unit: seconds. */
export const SUBMIT_CHECK_TIMEOUT_SECONDS = 180;
/** CellProfiler warnings kept per image set (provenance, MariaDB, `cpflow status`). Unit: lines. */
export const MAX_WARNINGS_PER_SET = 20;
/** Failed image sets `cpflow status` lists with their reason (the rest are counted). Unit: image sets. */
export const STATUS_FAILURES_SHOWN = 10;

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

// ---------------------------------------------------------------------------------------------
// A warm CellProfiler (issue 10, second part; activities/engines/cellprofiler/warm.ts).

/**
 * Run CellProfiler in long-lived processes, one per engine slot, that pay its start-up (imports,
 * module discovery: ~2 s) once, instead of starting the CLI for every engine invocation. Both run
 * CellProfiler's own headless entry point with the same arguments and give the same tables.
 * `CPFLOW_CELLPROFILER_WARM=0` falls back to the CLI. Unit: on/off.
 */
export const CELLPROFILER_WARM = true;
/**
 * A warm CellProfiler whose resident memory is above this after a run is replaced before its next
 * run (a CLI run returns everything at exit; this bounds what caches or leaks can hold across runs).
 * Unit: MiB. `CPFLOW_CELLPROFILER_WARM_MAX_RSS_MIB`.
 */
export const CELLPROFILER_WARM_MAX_RSS_MIB = 2048;
/** An idle warm CellProfiler is stopped after this long without a run (it holds a few hundred MiB). Unit: seconds. */
export const CELLPROFILER_WARM_IDLE_SECONDS = 600;
