/**
 * The contract every analysis engine implements. An engine turns the local files of one or more
 * image sets into CellProfiler ExportToSpreadsheet-style tables in a fresh output directory.
 * Engines know nothing about S3, MariaDB or Temporal: the analyzeImageSet activity does that I/O.
 */

export interface EngineChannelFile {
  /** Channel name as the pipeline's NamesAndTypes calls it (e.g. `DNA`). */
  channel: string;
  /** Absolute path of the downloaded image file. */
  path: string;
  /** Where the file lives durably (its `s3://` URI): tables name it instead of the scratch copy. */
  sourceUri?: string;
}

export interface EngineImageSet {
  /** Image set key, unique within the experiment (e.g. `P1-D03-f00`). */
  key: string;
  /** Metadata parsed from file names (Plate, Well, Site, …). */
  metadata: Record<string, string>;
  files: EngineChannelFile[];
  /**
   * ImageNumber to write in this set's tables. cpflow passes the image set's id, unique within the
   * experiment, so per-set folders concatenate without collisions (CytoTable and pycytominer join
   * on ImageNumber). Default: the set's 1-based position in the run, as CellProfiler numbers it.
   */
  imageNumber?: number;
  /** Where this set's outputs will be stored (`s3://…/sets/<key>/`), for path columns of its tables. */
  outputUri?: string;
}

/**
 * The image sets of one run form ONE group: the engine runs them together in one invocation, in the
 * order given, so modules that pool image sets (illumination functions over a plate, tracking) see
 * the whole group. Outputs that belong to no single set are the group's.
 */
export interface EngineGrouping {
  /** e.g. `P1` for `--group-by Plate`. */
  key: string;
  /** The group's values of the grouping keys, e.g. `{ Plate: 'P1' }`. */
  metadata: Record<string, string>;
  /** Where the group's own outputs will be stored (`s3://…/groups/<key>/`). */
  outputUri?: string;
}

export interface EngineRunInput {
  /** Usually one image set; several when batching amortises the engine's start-up, or a whole group. */
  imageSets: EngineImageSet[];
  /** Set when the image sets are one group (see EngineGrouping); absent for one set or a batch. */
  grouping?: EngineGrouping;
  /** Local path of the pipeline file, when the engine uses one. */
  pipelinePath?: string;
  /**
   * Fresh, empty directory per attempt. The engine writes one sub-directory per image set,
   * named by the set's key, each holding `Image.csv`, `<Object>.csv`, … with no file-name prefix.
   */
  outDir: string;
  /** Scratch space, removed by the caller afterwards. */
  tmpDir: string;
  /** Called periodically while the engine works (the activity turns it into heartbeats). */
  onProgress?: (detail: string) => void;
  /** Aborted when the activity is cancelled: the engine must stop and kill any child process. */
  signal?: AbortSignal;
  /** Give up after this long (milliseconds); the engine kills its work and throws. */
  timeoutMs?: number;
}

export interface EngineSetResult {
  key: string;
  /** Files written under `<outDir>/<key>/`, relative to that directory. */
  files: string[];
}

export interface EngineRunResult {
  engine: EngineIdentity;
  sets: EngineSetResult[];
  /**
   * Outputs that belong to no single set (saved once per group, or named by no set's row), under
   * `<outDir>/${SHARED_OUTPUTS_DIR}/`. With a grouping they are the group's outputs; in a batch of
   * unrelated sets they cannot be attributed, and the caller runs the sets one by one instead.
   */
  shared?: string[];
  /** Warnings the engine logged during this invocation (CellProfiler's WARNING lines, noise removed). */
  warnings?: string[];
}

/** Folder under outDir for outputs of no single set; not a possible image set key ('@'). */
export const SHARED_OUTPUTS_DIR = '@shared';

export interface EngineIdentity {
  /** `builtin` | `cellprofiler` | `command` */
  name: string;
  /** Exact version string, e.g. `cpflow-builtin 0.1.0` or `5.0.0.dev784`. */
  version: string;
  /** Plugin files the engine loads (CellProfiler's plugins directory), each with its sha256. */
  plugins?: Array<{ file: string; sha256: string }>;
  /** What the engine runs in, where that can change its results (CellProfiler's venv). */
  environment?: EngineEnvironment;
}

/** A CellProfiler installation: build, Python and the installed package set. */
export interface EngineEnvironment {
  /** CellProfiler's `--version`. */
  build: string;
  /** Python version of the interpreter, e.g. `3.9.18`. */
  python: string;
  /** sha256 of the sorted `pip freeze --all` lines. */
  packagesSha256: string;
}

/**
 * Thrown when the input itself is at fault (missing, empty or undecodable image; pipeline error on
 * that set). The activity turns it into a non-retryable failure recorded on the image set, so one
 * bad image fails its image set and never the others.
 */
export class ImageSetInputError extends Error {
  constructor(
    message: string,
    readonly setKey?: string,
  ) {
    super(message);
    this.name = 'ImageSetInputError';
  }
}

/**
 * A deterministic pipeline failure: a module raised an exception, or the pipeline made no image set
 * from the files. The same input fails the same way on every attempt, so it is final for the set (an
 * ImageSetInputError, hence never retried), and it names the module and the exception.
 */
export class PipelineRunError extends ImageSetInputError {
  constructor(
    message: string,
    setKey: string | undefined,
    /** The module that raised, e.g. `ClassifyObjects`; undefined when no module was running. */
    readonly moduleName?: string,
    /** The exception line, e.g. `AttributeError: module 'matplotlib.cm' has no attribute 'get_cmap'`. */
    readonly exception?: string,
  ) {
    super(message, setKey);
    this.name = 'PipelineRunError';
  }
}

export interface Engine {
  identity(): Promise<EngineIdentity>;
  run(input: EngineRunInput): Promise<EngineRunResult>;
}
