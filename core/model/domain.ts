/**
 * cpflow's domain model: the words every part shares (statuses, grouping rules, engine and dispatch
 * options, image set outcomes, progress), as zod schemas where they cross a boundary and as types.
 * Node-free, so workflow code can import it; the database, the CLI, activities and workers all
 * speak these types.
 */
import { z } from 'zod';
import * as DEFAULTS from './defaults';
import type { PartitionState, StagePlan, StageProgress } from './stages';

// ---------------------------------------------------------------------------------------------
// Statuses

/** `registering`: `cpflow submit` reserved the name and is uploading; the watcher starts only `submitted`. */
export const EXPERIMENT_STATUSES = ['registering', 'submitted', 'running', 'reducing', 'done', 'done_with_failures', 'failed', 'cancelled'] as const;
export type ExperimentStatus = (typeof EXPERIMENT_STATUSES)[number];
export const TERMINAL_STATUSES: readonly ExperimentStatus[] = ['done', 'done_with_failures', 'failed', 'cancelled'];
export const isTerminal = (status: ExperimentStatus): boolean => TERMINAL_STATUSES.includes(status);

export const IMAGE_SET_STATUSES = ['pending', 'running', 'done', 'failed', 'cancelled'] as const;
export type ImageSetStatus = (typeof IMAGE_SET_STATUSES)[number];

// ---------------------------------------------------------------------------------------------
// Engines and their options

/** `builtin`: cpflow's own TypeScript segmentation; `cellprofiler`: the real CellProfiler CLI. */
export const ENGINE_NAMES = ['cellprofiler', 'builtin'] as const;
export type EngineName = (typeof ENGINE_NAMES)[number];

/** What the engine computes: options of the builtin engine (CellProfiler reads its pipeline instead). */
export const engineOptionsSchema = z.object({
  nucleiChannel: z.string().optional(),
  minDiameter: z.number().positive().optional(),
  maxDiameter: z.number().positive().optional(),
});
export type EngineOptions = z.infer<typeof engineOptionsSchema>;

/** How an experiment's image sets are dispatched; every field defaults to core/model/defaults.ts. */
export const dispatchOptionsSchema = z.object({
  batchSize: z.number().int().min(1).max(DEFAULTS.MAX_BATCH_SIZE).default(DEFAULTS.BATCH_SIZE),
  window: z.number().int().min(1).default(DEFAULTS.WINDOW),
  chunkSize: z.number().int().min(1).default(DEFAULTS.CHUNK_SIZE),
  concurrentChunks: z.number().int().min(1).default(DEFAULTS.CONCURRENT_CHUNKS),
  maxEngineAttempts: z.number().int().min(1).default(DEFAULTS.MAX_ENGINE_ATTEMPTS),
  engineTimeoutSeconds: z.number().int().min(1).default(DEFAULTS.ENGINE_TIMEOUT_SECONDS),
  /**
   * Whether `batchSize` was asked for (`--batch-size`). false: the chunk workflows choose the batch
   * size from the measured cost per set (adaptiveBatchSize in batching.ts), `batchSize` unused.
   * Absent (experiments submitted before adaptive batching): explicit, as they always ran.
   */
  batchSizeExplicit: z.boolean().optional(),
});
export type DispatchOptions = z.infer<typeof dispatchOptionsSchema>;
export const defaultDispatch = (): DispatchOptions => dispatchOptionsSchema.parse({});
/** The batch size adapts to the measured cost per set (nothing asked for it explicitly). */
export const adaptiveBatching = (d: Pick<DispatchOptions, 'batchSizeExplicit'>): boolean => d.batchSizeExplicit === false;

/** The analysis activity's start-to-close time-out: the engine's own limit plus time to move files. */
export const analysisTimeoutSeconds = (d: Pick<DispatchOptions, 'engineTimeoutSeconds'>): number =>
  d.engineTimeoutSeconds + DEFAULTS.TRANSFER_ALLOWANCE_SECONDS;

// ---------------------------------------------------------------------------------------------
// Grouping rules: file names → image sets and channels

export const groupingRuleSchema = z.object({
  /** Regular expression with named groups; `Channel` (or the group named by `channelGroup`) picks the channel. */
  pattern: z.string().min(1),
  channelGroup: z.string().default('Channel'),
  /** Maps raw channel values from file names to pipeline channel names (e.g. `d0` → `DNA`). */
  channelMap: z.record(z.string(), z.string()).default({}),
  /** Set key template over the named groups, e.g. `{Plate}-{Well}-s{Site}`; default joins them with `-`. */
  keyTemplate: z.string().optional(),
  preset: z.string().optional(),
});
export type GroupingRule = z.infer<typeof groupingRuleSchema>;

// ---------------------------------------------------------------------------------------------
// Outcomes and results

export interface ResultFileRecord {
  /** `table:<Name>`, `file:<ext>`, `provenance`, `summary`, `report`, … */
  kind: string;
  uri: string;
  size: number;
  checksum: string;
}

export interface ImageSetOutcome {
  imageSetId: number;
  status: 'running' | 'done' | 'failed' | 'cancelled';
  attempts: number;
  /** Done because its provenance.json proved the work was already finished. */
  skipped?: boolean;
  outputPrefix?: string;
  error?: string;
  results?: ResultFileRecord[];
  /** Outputs of the set's whole group (e.g. an illumination function saved once per group); on one set of the group only. */
  groupResults?: ResultFileRecord[];
  /** Warnings the engine reported while analysing this set (CellProfiler's WARNING log lines). */
  warnings?: string[];
  /** A done set's contribution to the experiment summary, measured from its tables by the analysis activity. */
  summary?: SetSummary;
  /**
   * Wall seconds of the engine invocation that analysed this set, divided among its sets (a batch's or a
   * group's); absent for skipped and failed sets. What adaptive batching measures.
   */
  engineSeconds?: number;
  /** Image sets in the analysis activity that reported this outcome. */
  batchSize?: number;
}

/**
 * What the reduce step needs of one done image set's tables (its summary.csv cells and exact
 * per-measurement aggregates), measured by the analysis activity from the tables it has just
 * written, mirrored into MariaDB with the outcome. The reduce then reads MariaDB instead of every
 * set's tables from S3 (issue 10): a few hundred bytes per set. `v` is the format version; a set
 * without a summary (analysed by an older cpflow) is read from its tables as before.
 */
export const setSummarySchema = z.object({
  v: z.literal(1),
  /** summary.csv cells (Count_*, Mean_*), column → value. */
  cells: z.array(z.tuple([z.string(), z.union([z.number(), z.string()])])),
  /** Object name → number of objects. */
  counts: z.record(z.string(), z.number()),
  /** Image.csv's Metadata_* columns (first row). */
  imageMetadata: z.array(z.tuple([z.string(), z.string()])),
  /** The columns this set would define if it were the first done set, in summary order. */
  definedColumns: z.array(z.string()),
  /** `object<TAB>measurement` → exact aggregates of its finite values. */
  distributions: z.array(z.tuple([z.string(), z.object({ n: z.number(), sum: z.number(), min: z.number(), max: z.number() })])),
  /** Problems reading the set's tables (malformed CSV), as written into its Error cell. */
  error: z.string(),
  hasTableProblems: z.boolean(),
});
export type SetSummary = z.infer<typeof setSummarySchema>;

/** The experiment's final status from its counts over ALL its image sets. */
export function finalStatus(counts: { total: number; failed: number }, maxFailedFraction: number): ExperimentStatus {
  if (counts.total > 0 && (counts.failed === counts.total || counts.failed / counts.total > maxFailedFraction)) return 'failed';
  return counts.failed > 0 ? 'done_with_failures' : 'done';
}

// ---------------------------------------------------------------------------------------------
// What the workflow knows of an experiment

export interface ExperimentPlan {
  experimentId: number;
  name: string;
  project: string;
  bucket: string;
  engine: EngineName;
  status: ExperimentStatus;
  sealed: boolean;
  totalSets: number;
  maxFailedFraction: number;
  dispatch: DispatchOptions;
  /** The experiment has a platemap: its reduce is preceded by the profiles step. */
  profiles?: boolean;
  /** In run order; a plain experiment has one stage named SINGLE_STAGE (''). */
  stages: StagePlan[];
  /** Partitions of stages that wait for an earlier stage's groups (empty without such stages). */
  partitions: PartitionState[];
}

export interface ChunkRef {
  manifestKey: string;
  stage: string;
  /** Keys of the groups in the chunk, when its stage has dependents (they are released per group). */
  groups?: string[];
  count: number;
  firstSetId: number;
  lastSetId: number;
  /** Keys of the first and last image set, for the Web UI's summary of the chunk's run. */
  firstKey: string;
  lastKey: string;
}

export interface PreparedChunks {
  chunks: ChunkRef[];
  /** Where the partition's paging stands after these chunks. */
  cursor: { afterSetId: number; afterGroup: string };
  /** Image sets the manifest activity failed instead of paging (an upstream file that is missing). */
  failed?: ChunkResult;
  /** The experiment's sealed flag as the database has it now (a lab system may seal by updating the row). */
  sealed: boolean;
  status: ExperimentStatus;
}

// ---------------------------------------------------------------------------------------------
// Progress (the workflow's `progress` query, `cpflow status`, the Web UI summary)

export type ExperimentPhase = 'starting' | 'analyzing' | 'waiting-for-images' | 'reducing' | 'finished' | 'cancelled';

export interface SetFailure {
  key: string;
  stage?: string;
  error: string;
  attempts: number;
}

export interface ExperimentProgress {
  experimentId: number;
  phase: ExperimentPhase;
  /** Image sets known to this run so far (grows while an open experiment receives sets). */
  total: number;
  done: number;
  failed: number;
  /** Done because provenance.json proved the work was already finished (counted in `done`). */
  skipped: number;
  running: number;
  sealed: boolean;
  /** How many times this workflow has continued as new (history stays bounded). */
  runsSoFar: number;
  recentFailures: SetFailure[];
  /** Per stage, for experiments with more than one stage. */
  stages?: StageProgress[];
  /** Image sets per analysis activity: fixed (`--batch-size`) or chosen from the measured cost per set. */
  batching?: BatchingState & { adaptive: boolean };
}

/** Progress of one chunk child, returned to its parent. */
export interface ChunkResult {
  stage?: string;
  done: number;
  failed: number;
  skipped: number;
  failures: SetFailure[];
  /** Adaptive batching: the chunk's estimate of engine seconds per set and the last batch size it chose. */
  batching?: BatchingState;
}

/** What adaptive batching has measured and chosen so far (workflow-side; progress and the Web UI show it). */
export interface BatchingState {
  /** Smoothed engine seconds per image set, from the outcomes so far; absent until one set ran. */
  secondsPerSet?: number;
  /** Image sets per analysis activity chosen last. */
  batchSize: number;
}
