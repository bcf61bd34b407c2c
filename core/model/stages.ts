/**
 * Stages and groups: how production CellProfiler runs are shaped. An experiment has one or more
 * stages (an illumination pipeline per plate, then an analysis pipeline per site, …); each stage
 * runs its pipeline over every image set, either set by set (in batches) or one GROUP at a time
 * (all image sets sharing the values of the stage's `groupBy` metadata keys, in one engine
 * invocation). A stage may take files an earlier, grouped stage wrote (the plate's illumination
 * function) as extra channels of its image sets; such a stage is split into PARTITIONS, one per
 * upstream group, and a partition starts as soon as its upstream group is done.
 * Node-free: the workflow, activities, the CLI and the database share these shapes.
 */
import { z } from 'zod';

/** Stage name of a plain experiment (one pipeline, no experiment file). Keeps its S3 layout unchanged. */
export const SINGLE_STAGE = '';

/** Stage names: short enough for S3 keys and result kinds (`summary:<stage>`). */
export const STAGE_NAME_PATTERN = /^[A-Za-z][A-Za-z0-9_-]{0,31}$/;

/** How the engine hands a stage's image sets to CellProfiler. */
export const STAGE_INPUT_KINDS = ['files', 'loaddata'] as const;
export type StageInputKind = (typeof STAGE_INPUT_KINDS)[number];

/** A file an earlier stage's group wrote, delivered to this stage's image sets as a channel. */
export const stageInputSchema = z.object({
  /** The earlier stage; it must group by metadata keys every image set of this stage has. */
  stage: z.string().regex(STAGE_NAME_PATTERN),
  /**
   * File name (or path relative to the group's outputs) the upstream group wrote, e.g.
   * `IllumDNA.npy`; `{Plate}`-style placeholders are filled from the group's metadata.
   */
  file: z.string().min(1),
  /** Channel (image) name the file gets in this stage, e.g. `IllumDNA`. */
  as: z.string().regex(/^[A-Za-z][A-Za-z0-9_]*$/, 'a CellProfiler image name: letters, digits, _'),
});
export type StageInput = z.infer<typeof stageInputSchema>;

/** One stage as the experiment stores it (MariaDB `experiment.stages`, the plan, manifests). */
export const stageSpecSchema = z.object({
  name: z.string(),
  pipelineUri: z.string().nullable(),
  pipelineSha256: z.string().nullable(),
  /** Metadata keys whose values form a group; empty: image sets run on their own (in batches). */
  groupBy: z.array(z.string()).default([]),
  input: z.enum(STAGE_INPUT_KINDS).default('files'),
  /** Files from an earlier stage (at most one upstream stage), matched by that stage's groupBy keys. */
  inputs: z.array(stageInputSchema).default([]),
});
export type StageSpec = z.infer<typeof stageSpecSchema>;

/** The upstream stage a stage takes files from, if any. */
export const upstreamOf = (stage: Pick<StageSpec, 'inputs'>): string | undefined => stage.inputs[0]?.stage;

/** Keys become S3 path segments: the same safe alphabet as image set keys. */
export const safeKeySegment = (value: string): string => value.replace(/[^A-Za-z0-9._-]+/g, '_');

/**
 * The group (or partition) key of an image set for these metadata keys: their values joined by `-`,
 * e.g. `P1` or `P1-A01`. '' when `keys` is empty. Throws when the set lacks a key.
 */
export function groupKeyOf(metadata: Record<string, string>, keys: readonly string[]): string {
  return keys
    .map((k) => {
      const value = metadata[k];
      if (value === undefined) throw new Error(`image set metadata has no ${k}`);
      return safeKeySegment(value);
    })
    .join('-');
}

/** Fills `{Key}` placeholders of a stage input's file name from the upstream group's metadata. */
export function stageInputFileName(pattern: string, metadata: Record<string, string>): string {
  return pattern.replace(/\{([A-Za-z][A-Za-z0-9_]*)\}/g, (whole, key: string) => metadata[key] ?? whole);
}

/** Where a paging of one partition of one stage stands. */
export interface PartitionCursor {
  stage: string;
  /** '' for a stage with no upstream (one partition holding every image set). */
  partition: string;
  /** Ungrouped stages: image sets with a larger id have not been paged yet. */
  afterSetId: number;
  /** Grouped stages: groups with a larger key have not been paged yet. */
  afterGroup: string;
  exhausted: boolean;
}

/** A stage as the workflow sees it. */
export interface StagePlan {
  name: string;
  grouped: boolean;
  upstream?: string;
  /** Later stages that take files from this one (their partitions wait for this stage's groups). */
  dependents: string[];
}

/** Partitions of dependent stages as the plan activity found them. */
export interface PartitionState {
  stage: string;
  partition: string;
  /** `ready`: upstream group already done; `waiting`: it has still to run; `blocked`: it failed. */
  state: 'ready' | 'waiting' | 'blocked';
  error?: string;
}

/** A chunk child tells its parent that one group of a stage with dependents has ended. */
export interface GroupFinished {
  stage: string;
  group: string;
  ok: boolean;
  error?: string;
}

/** Per-stage counts for progress and `cpflow status`. */
export interface StageProgress {
  name: string;
  total: number;
  done: number;
  failed: number;
  skipped: number;
}
