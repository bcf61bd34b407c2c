/**
 * Experiment files: the stages of a production run, e.g. an illumination pipeline per plate and
 * then an analysis pipeline per site that loads the plate's illumination function. YAML or JSON
 * (JSON is YAML), validated with zod; pipelines are paths relative to the file.
 *
 *   stages:
 *     - name: illum
 *       pipeline: illum.cppipe
 *       groupBy: [Plate]
 *     - name: analysis
 *       pipeline: analysis.cppipe
 *       inputs:
 *         - { stage: illum, file: IllumDNA.npy, as: IllumDNA }
 *
 * Stages run in dependency order (a stage after the stage it takes files from); the last one is
 * the experiment's final stage (its tables make summary.csv and the report).
 */
import fs from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { STAGE_NAME_PATTERN, stageInputSchema } from './model/stages';

export class ExperimentFileError extends Error {
  constructor(
    readonly source: string,
    problem: string,
  ) {
    super(`--experiment ${source}: ${problem}`);
    this.name = 'ExperimentFileError';
  }
}

const stageFileSchema = z
  .object({
    name: z.string().regex(STAGE_NAME_PATTERN, 'a stage name: a letter, then letters, digits, _ or - (32 at most)'),
    pipeline: z.string().min(1),
    groupBy: z.array(z.string().regex(/^[A-Za-z][A-Za-z0-9_]*$/, 'a metadata key')).default([]),
    inputs: z.array(stageInputSchema.strict()).default([]),
  })
  .strict();

const experimentFileSchema = z.object({ stages: z.array(stageFileSchema).min(1, 'declares no stage') }).strict();

export interface ExperimentFileStage {
  name: string;
  /** Absolute path of the stage's pipeline. */
  pipelinePath: string;
  groupBy: string[];
  inputs: Array<z.infer<typeof stageInputSchema>>;
}

/** Reads, validates and orders an experiment file; every problem is one ExperimentFileError. */
export function readExperimentFile(file: string): ExperimentFileStage[] {
  if (!fs.existsSync(file)) throw new ExperimentFileError(file, 'no such file');
  return parseExperimentFile(fs.readFileSync(file, 'utf8'), file);
}

export function parseExperimentFile(text: string, source: string): ExperimentFileStage[] {
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    throw new ExperimentFileError(source, `not valid YAML or JSON (${(err as Error).message.split('\n')[0]})`);
  }
  const parsed = experimentFileSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue?.path.length ? issue.path.join('.') : 'file';
    throw new ExperimentFileError(source, `${where}: ${issue?.message ?? 'invalid'}`);
  }
  const stages = parsed.data.stages;
  const byName = new Map<string, (typeof stages)[number]>();
  for (const s of stages) {
    if (byName.has(s.name)) throw new ExperimentFileError(source, `stage ${s.name} is declared twice`);
    byName.set(s.name, s);
  }
  for (const s of stages) {
    const upstreams = [...new Set(s.inputs.map((i) => i.stage))];
    for (const u of upstreams) {
      if (u === s.name) throw new ExperimentFileError(source, `stage ${s.name} takes files from itself (a cycle)`);
      if (!byName.has(u)) throw new ExperimentFileError(source, `stage ${s.name} takes files from unknown stage ${u} (stages: ${[...byName.keys()].join(', ')})`);
    }
    if (upstreams.length > 1) {
      throw new ExperimentFileError(source, `stage ${s.name} takes files from ${upstreams.join(' and ')}; cpflow supports one upstream stage per stage`);
    }
    const names = s.inputs.map((i) => i.as);
    const twice = names.find((n, i) => names.indexOf(n) !== i);
    if (twice) throw new ExperimentFileError(source, `stage ${s.name} names two inputs ${twice}`);
    const upstream = upstreams[0] ? byName.get(upstreams[0]) : undefined;
    if (upstream) {
      if (upstream.groupBy.length === 0) {
        throw new ExperimentFileError(
          source,
          `stage ${s.name} takes files from stage ${upstream.name}, which has no groupBy: files are matched to image sets by the upstream stage's group (e.g. groupBy: [Plate])`,
        );
      }
      const missing = upstream.groupBy.filter((k) => !s.groupBy.includes(k));
      if (s.groupBy.length > 0 && missing.length > 0) {
        throw new ExperimentFileError(
          source,
          `stage ${s.name} groups by ${s.groupBy.join(',')} but its upstream ${upstream.name} groups by ${upstream.groupBy.join(',')}: a group would need files of several upstream groups; add ${missing.join(', ')} to its groupBy`,
        );
      }
    }
  }
  const ordered = topologicalOrder(stages, source);
  const dir = path.dirname(path.resolve(source));
  return ordered.map((s) => ({ name: s.name, pipelinePath: path.resolve(dir, s.pipeline), groupBy: s.groupBy, inputs: s.inputs }));
}

/** Kahn's algorithm, keeping the file's order among stages that are ready together. */
function topologicalOrder<T extends { name: string; inputs: Array<{ stage: string }> }>(stages: T[], source: string): T[] {
  const done = new Set<string>();
  const ordered: T[] = [];
  while (ordered.length < stages.length) {
    const next = stages.find((s) => !done.has(s.name) && s.inputs.every((i) => done.has(i.stage)));
    if (!next) {
      const stuck = stages.filter((s) => !done.has(s.name)).map((s) => s.name);
      throw new ExperimentFileError(source, `stages ${stuck.join(', ')} take files from each other (a cycle)`);
    }
    done.add(next.name);
    ordered.push(next);
  }
  return ordered;
}
