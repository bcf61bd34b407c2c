/**
 * `cpflow submit`'s plan of stages: which pipeline each stage runs, how it groups image sets, which
 * files of an earlier stage it takes, and what cpflow refuses because it cannot run it correctly
 * (a pipeline that pools image sets without --group-by, a group larger than the limit, a grouping
 * key the image sets do not have). Pure checks on parsed input: nothing here touches S3 or MariaDB.
 */
import fs from 'node:fs';
import { readExperimentFile } from '../core/experiment-file';
import { DEFAULTS, groupKeyOf, SINGLE_STAGE, upstreamOf, type StageInput } from '../core/model';
import { parseCppipe, pipelineSha256 } from '../core/pipeline/cppipe';
import { describePooling, type PoolingFinding } from '../core/pipeline/pooling';
import { validatePipelineForCpflow, type CpflowPipelineInfo } from '../core/pipeline/validate';
import { readPipelineFile } from './pipeline-file';

export class StagePlanError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StagePlanError';
  }
}

export interface PlannedStage {
  /** '' for a plain experiment (one pipeline, from --pipeline). */
  name: string;
  /** The label used in messages: `--pipeline x.cppipe` or `stage illum (illum.cppipe)`. */
  label: string;
  pipelinePath?: string;
  pipelineText?: string;
  pipelineSha256?: string;
  info?: CpflowPipelineInfo;
  groupBy: string[];
  inputs: StageInput[];
}

export interface StageOptions {
  pipelineFile?: string;
  experimentFile?: string;
  groupBy?: string[];
}

/** Reads the pipelines and checks each on its own (pooling needs --group-by / groupBy). */
export function planStages(o: StageOptions): PlannedStage[] {
  if (o.experimentFile) {
    if (o.pipelineFile) throw new StagePlanError('give either --experiment (its stages name their pipelines) or --pipeline, not both');
    if (o.groupBy && o.groupBy.length > 0) throw new StagePlanError('--group-by: with --experiment, each stage says its own groupBy');
    return readExperimentFile(o.experimentFile).map((s) => {
      const label = `stage ${s.name} (${s.pipelinePath})`;
      if (!fs.existsSync(s.pipelinePath)) throw new StagePlanError(`--experiment ${o.experimentFile}: ${label}: no such pipeline file`);
      return withPipeline({ name: s.name, label, pipelinePath: s.pipelinePath, groupBy: s.groupBy, inputs: s.inputs });
    });
  }
  const stage: PlannedStage = {
    name: SINGLE_STAGE,
    label: o.pipelineFile ? `--pipeline ${o.pipelineFile}` : 'the builtin engine',
    pipelinePath: o.pipelineFile,
    groupBy: o.groupBy ?? [],
    inputs: [],
  };
  return [o.pipelineFile ? withPipeline(stage) : stage];
}

function withPipeline(stage: PlannedStage): PlannedStage {
  const path = stage.pipelinePath;
  if (!path) return stage;
  // A directory, a binary or a project file is named as such, never dumped (pipeline-file.ts).
  const text = readPipelineFile(path);
  const info = validatePipelineForCpflow(parseCppipe(text, path));
  return { ...stage, pipelineText: text, pipelineSha256: pipelineSha256(text), info };
}

/** Refuses pooling without grouping, and grouping that would split the pipeline's own groups. */
export function checkGrouping(
  stage: PlannedStage,
  metadataKeys: string[],
  findings: PoolingFinding[] = stage.info?.pooling ?? [],
  warnings: string[] = [],
): void {
  const pooling = findings.filter((f) => f.kind === 'pools');
  const flag = stage.name === SINGLE_STAGE ? '--group-by' : `groupBy of stage ${stage.name}`;
  for (const key of stage.groupBy) {
    if (!metadataKeys.includes(key)) {
      throw new StagePlanError(`${flag}: ${key} is not a metadata key of the image sets (keys: ${metadataKeys.join(', ') || 'none'})`);
    }
  }
  if (stage.groupBy.length === 0 && pooling.length > 0) {
    const suggestion = suggestKeys(stage, metadataKeys);
    const how =
      stage.name === SINGLE_STAGE
        ? `run it with --group-by ${suggestion} (one CellProfiler run per group, over all of the group's image sets)`
        : `give stage ${stage.name} groupBy: [${suggestion}] in the experiment file`;
    throw new StagePlanError(
      `${stage.label}: ${describePooling(pooling[0] as PoolingFinding)}; split into one CellProfiler run per image set it would compute other numbers than CellProfiler run on all the files: ${how}` +
        (pooling.length > 1 ? ` (also: ${pooling.slice(1).map(describePooling).join('; ')})` : ''),
    );
  }
  if (stage.groupBy.length === 0) {
    for (const f of findings.filter((x) => x.kind === 'experiment-wide')) {
      warnings.push(
        `${stage.label}: ${describePooling(f)}; run image set by image set, each set's Experiment table holds that set's values, not the experiment's (per-image measurements are unaffected; --group-by computes them per group)`,
      );
    }
  }
  const own = stage.info?.groupingKeys;
  if (own && stage.groupBy.length > 0) {
    const extra = stage.groupBy.filter((k) => !own.includes(k));
    if (extra.length > 0) {
      throw new StagePlanError(
        `${flag} ${stage.groupBy.join(',')}: the pipeline's Groups module groups by ${own.join(', ')}, so ${extra.join(', ')} would split its groups; group by a subset of ${own.join(', ')}`,
      );
    }
  }
}

function suggestKeys(stage: PlannedStage, metadataKeys: string[]): string {
  const own = stage.info?.groupingKeys?.filter((k) => metadataKeys.includes(k));
  if (own && own.length > 0) return own.join(',');
  if (metadataKeys.includes('Plate')) return 'Plate';
  return metadataKeys[0] ?? '<metadata key>';
}

/** Every stage input names an earlier, grouped stage whose keys the image sets have (the file checked those). */
export function checkStageInputs(stages: PlannedStage[], metadataKeys: string[]): void {
  for (const stage of stages) {
    const upstream = upstreamOf(stage);
    if (!upstream) continue;
    const up = stages.find((s) => s.name === upstream);
    for (const key of up?.groupBy ?? []) {
      if (!metadataKeys.includes(key)) throw new StagePlanError(`stage ${stage.name} takes files from ${upstream} by ${key}, which the image sets do not have`);
    }
  }
}

export interface StagedSet<F> {
  stage: string;
  key: string;
  metadata: Record<string, string>;
  files: F[];
  groupKey: string;
  partitionKey: string;
}

/**
 * One row per stage and image set (every stage analyses every image set), with its group and
 * partition. Refuses groups over DEFAULTS.MAX_GROUP_SETS.
 */
export function stageSets<F>(stages: PlannedStage[], sets: Array<{ key: string; metadata: Record<string, string>; files: F[] }>): Array<StagedSet<F>> {
  const out: Array<StagedSet<F>> = [];
  for (const stage of stages) {
    const upstream = stages.find((s) => s.name === upstreamOf(stage));
    const sizes = new Map<string, number>();
    for (const set of sets) {
      const groupKey = groupKeyOf(set.metadata, stage.groupBy);
      const partitionKey = upstream ? groupKeyOf(set.metadata, upstream.groupBy) : '';
      if (stage.groupBy.length > 0) sizes.set(groupKey, (sizes.get(groupKey) ?? 0) + 1);
      out.push({ stage: stage.name, key: set.key, metadata: set.metadata, files: set.files, groupKey, partitionKey });
    }
    for (const [group, size] of sizes) {
      if (size > DEFAULTS.MAX_GROUP_SETS) {
        const where = stage.name === SINGLE_STAGE ? '--group-by' : `stage ${stage.name} groupBy`;
        throw new StagePlanError(
          `${where} ${stage.groupBy.join(',')}: group ${group} has ${size} image sets; a group runs in one CellProfiler invocation and holds at most ${DEFAULTS.MAX_GROUP_SETS}: group by more keys (e.g. ${stage.groupBy.join(',')},Well)`,
        );
      }
    }
  }
  return out;
}

/**
 * Channels every image set must bring: what the stages' NamesAndTypes name, except what a stage
 * receives from an earlier stage.
 */
export function requiredImageChannels(stages: PlannedStage[]): string[] {
  const needed = new Set<string>();
  for (const s of stages) {
    const fromEarlierStage = new Set(s.inputs.map((i) => i.as));
    for (const c of s.info?.channels ?? []) if (!fromEarlierStage.has(c)) needed.add(c);
  }
  return [...needed];
}
