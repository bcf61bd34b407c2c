/**
 * The activities cpflow registers, as the workflows see them: names, inputs and outputs only.
 * activities/index.ts implements this contract (checked with `satisfies`), and workflows proxy it,
 * so workflow code never imports activity code.
 */
import type { ChunkRef, ChunkResult, ExperimentPlan, ExperimentStatus, ImageSetOutcome, PreparedChunks } from './domain';
import type { ProfilesInput, ProfilesOutput, ProfilesStepResult } from './profiles';

export interface PrepareChunksInput {
  experimentId: number;
  /** The stage and partition to page ('' and '' for a plain experiment). */
  stage: string;
  partition: string;
  /** The workflow's cursor: only image sets with a larger id are paged (ungrouped stages). */
  afterSetId: number;
  /** Grouped stages: only groups with a larger key are paged (a group is never split). */
  afterGroup: string;
  chunkSize: number;
  maxChunks: number;
}

export interface ChunkManifestRef {
  bucket: string;
  manifestKey: string;
}

export interface ChunkIndexEntry {
  id: number;
  key: string;
  /** The set's group in a grouped stage ('' otherwise): consecutive entries of one group run together. */
  group: string;
}

export interface FailPartitionInput {
  experimentId: number;
  stage: string;
  partition: string;
  error: string;
}

export interface AnalyzeInput extends ChunkManifestRef {
  /** Positions in the chunk manifest: one set, or several run in one engine invocation. */
  indices: number[];
}

export interface SyncImageSetsInput {
  experimentId: number;
  outcomes: ImageSetOutcome[];
}

export interface SyncExperimentStatusInput {
  experimentId: number;
  status: ExperimentStatus;
  error?: string | null;
  summaryUri?: string;
  reportUri?: string;
}

export interface ReduceInput {
  experimentId: number;
  workflowId: string;
  /** Set when the experiment has a platemap: the profiles step's output (drawn in the report) or its error. */
  profiles?: ProfilesStepResult;
}

export interface ReduceOutput {
  /** Absent when the final stage wrote no tables (an illumination-only pipeline). */
  summaryUri?: string;
  reportUri: string;
  provenanceUri: string;
  total: number;
  done: number;
  failed: number;
  objects: number;
}

/** Manifest and mirror activities: queue `cpflow` (the workflow pool). */
export interface ControlActivities {
  loadExperimentPlan(experimentId: number): Promise<ExperimentPlan>;
  prepareManifestChunks(input: PrepareChunksInput): Promise<PreparedChunks>;
  loadChunkIndex(input: ChunkManifestRef): Promise<ChunkIndexEntry[]>;
  /** Fails the pending image sets of a partition whose upstream group failed; returns what it failed. */
  failPartition(input: FailPartitionInput): Promise<ChunkResult>;
  syncImageSets(input: SyncImageSetsInput): Promise<void>;
  syncExperimentStatus(input: SyncExperimentStatusInput): Promise<void>;
}

/** Image set analysis: one queue per engine (`analysisQueueFor` in names.ts). */
export interface AnalysisActivities {
  analyzeImageSets(input: AnalyzeInput): Promise<ImageSetOutcome[]>;
}

/** Merging and the report: queue `reduce`. */
export interface ReduceActivities {
  reduceExperiment(input: ReduceInput): Promise<ReduceOutput>;
}

/**
 * Single-cell Parquet and well profiles (CytoTable, pycytominer) for experiments with a platemap:
 * queue `reduce`, after every image set has ended and before reduceExperiment (whose report draws them).
 */
export interface ProfilesActivities {
  computeProfiles(input: ProfilesInput): Promise<ProfilesOutput>;
}

export type CpflowActivities = ControlActivities & AnalysisActivities & ReduceActivities & ProfilesActivities;
export type { ChunkRef };
